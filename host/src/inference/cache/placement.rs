//! Which device a model goes to: a pure choice over each device's budget, bytes in use and
//! bytes it could free, so it is tested without loading anything.

use super::DeviceBudget;

/// The device a model of `bytes` goes to, given each device's bytes in use and the bytes it
/// would have free with its idle models unloaded (when `evict` allows that): the accelerator
/// with the fewest bytes in use that has room, else the one that can make room, else the CPU
/// (room first); ties go to the device listed first. `None` when no device can take it.
pub(super) fn choose(
    devices: &[DeviceBudget],
    used: &[u64],
    reclaimable: &[u64],
    bytes: u64,
    evict: bool,
) -> Option<usize> {
    let mut order: Vec<usize> = (0..devices.len())
        .filter(|&d| devices[d].budget >= bytes)
        .collect();
    order.sort_by_key(|&d| used[d]);
    for accelerators in [true, false] {
        let group = || {
            order
                .iter()
                .copied()
                .filter(move |&d| devices[d].accelerator == accelerators)
        };
        if let Some(free) = group().find(|&d| used[d].saturating_add(bytes) <= devices[d].budget) {
            return Some(free);
        }
        if evict && let Some(d) = group().find(|&d| reclaimable[d] >= bytes) {
            return Some(d);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::choose;
    use crate::backends::Placement;
    use crate::inference::cache::DeviceBudget;

    fn device(name: &str, accelerator: bool, budget: u64) -> DeviceBudget {
        DeviceBudget {
            name: Arc::from(name),
            placement: Placement::Cpu,
            accelerator,
            budget,
        }
    }

    #[test]
    fn a_model_goes_to_the_least_loaded_gpu_with_room_and_the_cpu_last() {
        let devices = [
            device("cpu", false, 1000),
            device("cuda:0", true, 100),
            device("cuda:1", true, 100),
        ];
        // The GPU with fewer bytes in use, though listed after the CPU and another GPU.
        assert_eq!(choose(&devices, &[0, 50, 20], &[0; 3], 30, false), Some(2));
        // Ties go to the one listed first.
        assert_eq!(choose(&devices, &[0, 20, 20], &[0; 3], 30, false), Some(1));
        // The least loaded (a smaller card) has no room for this one; the other has.
        let smaller = [
            device("cpu", false, 1000),
            device("cuda:0", true, 100),
            device("cuda:1", true, 50),
        ];
        assert_eq!(choose(&smaller, &[0, 40, 10], &[0; 3], 45, false), Some(1));
        // No GPU has room, and nothing may be unloaded: the CPU.
        assert_eq!(
            choose(&devices, &[0, 90, 90], &[10, 10, 10], 30, false),
            Some(0)
        );
        // Unloading idle models on a GPU comes before the CPU.
        assert_eq!(
            choose(&devices, &[0, 90, 90], &[1000, 10, 40], 30, true),
            Some(2)
        );
        // Larger than any GPU's whole budget: the CPU.
        assert_eq!(
            choose(&devices, &[0, 0, 0], &[1000, 100, 100], 101, true),
            Some(0)
        );
    }

    #[test]
    fn without_the_cpu_listed_a_model_that_no_gpu_can_take_goes_nowhere() {
        let devices = [device("cuda:0", true, 100), device("cuda:1", true, 100)];
        assert_eq!(choose(&devices, &[90, 95], &[10, 5], 30, true), None);
        assert_eq!(choose(&devices, &[90, 95], &[40, 5], 30, false), None);
        assert_eq!(choose(&devices, &[90, 95], &[40, 5], 30, true), Some(0));
        assert_eq!(choose(&devices, &[0, 0], &[100, 100], 101, true), None);
    }
}
