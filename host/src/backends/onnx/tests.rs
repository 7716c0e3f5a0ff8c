use super::AlignedBytes;

#[test]
fn aligned_buffers_are_borrowed_without_copying() {
    let words = [1u64, 2, 3];
    let bytes: &[u8] = bytemuck::cast_slice(&words);
    let aligned = AlignedBytes::new(bytes, 8);
    assert!(matches!(aligned, AlignedBytes::Borrowed(_)));
    assert_eq!(aligned.as_slice().as_ptr(), bytes.as_ptr());
}

#[test]
fn misaligned_buffers_are_copied_once_into_aligned_storage() {
    let words = [0x0807_0605_0403_0201u64, 0x100f_0e0d_0c0b_0a09];
    let bytes: &[u8] = &bytemuck::cast_slice::<u64, u8>(&words)[1..13];
    let aligned = AlignedBytes::new(bytes, 4);
    assert!(matches!(aligned, AlignedBytes::Copied(..)));
    assert_eq!(aligned.as_slice(), bytes);
    assert!((aligned.as_slice().as_ptr() as usize).is_multiple_of(8));
}

#[test]
fn empty_buffers_get_an_aligned_address() {
    let aligned = AlignedBytes::new(&[], 8);
    assert!(aligned.as_slice().is_empty());
    assert!((aligned.as_slice().as_ptr() as usize).is_multiple_of(8));
}
