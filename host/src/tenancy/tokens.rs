//! Tenant tokens: random, shown once, kept only as their sha256.

use crate::store::Digest;

/// A new secret token: 32 random bytes as hex, prefixed so it is recognizable in a leak scan.
pub fn new_token(prefix: &str) -> anyhow::Result<String> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{prefix}_{hex}"))
}

pub fn token_hash(token: &str) -> Digest {
    Digest::of(token.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_stored_as_hashes() {
        let a = new_token("corral_t").unwrap();
        let b = new_token("corral_t").unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("corral_t_") && a.len() == "corral_t_".len() + 64);
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_ne!(token_hash(&a), token_hash(&b));
    }
}
