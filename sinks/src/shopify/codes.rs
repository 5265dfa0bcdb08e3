//! Discount codes from a store's pattern, per `BRIEF.md`:
//!
//! - Merge variables `{{advocate_identifier}}`, `{{advocate_first_name}}`, `{{random_hex_4}}`,
//!   `{{random_hex_6}}`, `{{random_integer_4}}`, `{{random_integer_6}}`.
//! - The result is uppercased and keeps only letters, digits, `-` and `_`.
//! - Codes are unique per store. A collision is retried up to [`ATTEMPTS`] times in all (a
//!   pattern with a random part draws again). After that the advocate is skipped, and the caller
//!   emits an alert.

use rand::Rng;

/// Tries per advocate before it is skipped.
pub const ATTEMPTS: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("unknown merge variable {{{{{0}}}}} in the code pattern")]
    UnknownVariable(String),
    #[error("the code pattern has an unclosed {{{{")]
    Unclosed,
    #[error("the code pattern gives an empty code for advocate {0}")]
    Empty(String),
    #[error("{attempts} codes for advocate {advocate} were all taken (last {last}); skipped")]
    Collisions {
        advocate: String,
        attempts: usize,
        last: String,
    },
}

/// What a pattern can merge in about an advocate.
#[derive(Debug, Clone, Copy)]
pub struct AdvocateNames<'a> {
    pub identifier: &'a str,
    pub first_name: &'a str,
}

/// Checks a pattern once, before any code is minted: every variable known, every `{{` closed.
pub fn validate(pattern: &str) -> Result<(), CodeError> {
    let names = AdvocateNames {
        identifier: "x",
        first_name: "x",
    };
    render(pattern, names, &mut rand::rngs::mock::StepRng::new(0, 1)).map(|_| ())
}

/// One code from `pattern`: merged, uppercased, only `A-Z`, `0-9`, `-` and `_` kept.
pub fn render(
    pattern: &str,
    advocate: AdvocateNames<'_>,
    rng: &mut impl Rng,
) -> Result<String, CodeError> {
    let mut merged = String::new();
    let mut rest = pattern;
    while let Some(start) = rest.find("{{") {
        merged.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or(CodeError::Unclosed)?;
        let name = after[..end].trim();
        match name {
            "advocate_identifier" => merged.push_str(advocate.identifier),
            "advocate_first_name" => merged.push_str(advocate.first_name),
            "random_hex_4" => merged.push_str(&format!("{:04x}", rng.gen_range(0..0x1_0000u32))),
            "random_hex_6" => merged.push_str(&format!("{:06x}", rng.gen_range(0..0x100_0000u32))),
            "random_integer_4" => merged.push_str(&rng.gen_range(1_000..10_000u32).to_string()),
            "random_integer_6" => {
                merged.push_str(&rng.gen_range(100_000..1_000_000u32).to_string())
            }
            other => return Err(CodeError::UnknownVariable(other.to_owned())),
        }
        rest = &after[end + 2..];
    }
    merged.push_str(rest);
    let code: String = merged
        .to_uppercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    if code.is_empty() {
        return Err(CodeError::Empty(advocate.identifier.to_owned()));
    }
    Ok(code)
}

/// A code for `advocate` that `taken` (the store's codes, compared uppercased) does not hold.
pub fn mint(
    pattern: &str,
    advocate: AdvocateNames<'_>,
    taken: impl Fn(&str) -> bool,
    rng: &mut impl Rng,
) -> Result<String, CodeError> {
    let mut last = String::new();
    for _ in 0..ATTEMPTS {
        last = render(pattern, advocate, rng)?;
        if !taken(&last) {
            return Ok(last);
        }
    }
    Err(CodeError::Collisions {
        advocate: advocate.identifier.to_owned(),
        attempts: ATTEMPTS,
        last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::cell::Cell;
    use std::collections::HashSet;

    const ANNA: AdvocateNames<'static> = AdvocateNames {
        identifier: "anna.k",
        first_name: "Anna Maria",
    };

    #[test]
    fn merges_uppercases_and_keeps_only_code_characters() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let code = render(
            "{{advocate_first_name}} x {{ advocate_identifier }}-10%",
            ANNA,
            &mut rng,
        );
        assert_eq!(code.unwrap(), "ANNAMARIAXANNAK-10");
        let code = render(
            "{{advocate_identifier}}_{{random_hex_4}}{{random_integer_6}}",
            ANNA,
            &mut rng,
        )
        .unwrap();
        let (name, random) = code.split_at("ANNAK_".len());
        assert_eq!(name, "ANNAK_");
        assert_eq!(random.len(), 10);
        assert!(random
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()));
    }

    #[test]
    fn bad_patterns_are_refused_before_minting() {
        assert_eq!(
            validate("{{advocate_last_name}}"),
            Err(CodeError::UnknownVariable("advocate_last_name".into()))
        );
        assert_eq!(validate("SAVE{{random_hex_4"), Err(CodeError::Unclosed));
        assert_eq!(validate("%%"), Err(CodeError::Empty("x".into())));
        assert_eq!(
            validate("{{advocate_identifier}}{{random_integer_4}}"),
            Ok(())
        );
    }

    #[test]
    fn a_collision_draws_again_and_five_collisions_skip_the_advocate() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let asked = Cell::new(0);
        let first_taken = |code: &str| {
            asked.set(asked.get() + 1);
            asked.get() == 1 && code.starts_with("ANNAK")
        };
        let code = mint(
            "{{advocate_identifier}}{{random_integer_4}}",
            ANNA,
            first_taken,
            &mut rng,
        )
        .unwrap();
        assert_eq!(asked.get(), 2, "one retry after the collision");
        assert!(code.starts_with("ANNAK"));

        let taken: HashSet<&str> = ["ANNAK"].into();
        let asked = Cell::new(0);
        let result = mint(
            "{{advocate_identifier}}",
            ANNA,
            |code| {
                asked.set(asked.get() + 1);
                taken.contains(code)
            },
            &mut rng,
        );
        assert_eq!(asked.get(), ATTEMPTS);
        assert_eq!(
            result,
            Err(CodeError::Collisions {
                advocate: "anna.k".into(),
                attempts: 5,
                last: "ANNAK".into()
            })
        );
    }
}
