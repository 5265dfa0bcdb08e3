//! Discount codes from a store's pattern, per `BRIEF.md`:
//!
//! - Merge variables `{{advocate_identifier}}`, `{{advocate_first_name}}`, `{{random_hex_4}}`,
//!   `{{random_hex_6}}`, `{{random_integer_4}}`, `{{random_integer_6}}`.
//! - The result is uppercased and keeps only letters, digits, `-` and `_`.
//! - Codes are unique per store. A collision is retried up to [`ATTEMPTS`] times in all (a
//!   pattern with a random part draws again). After that the advocate is skipped, and the caller
//!   emits an alert.
//! - [`mint_codes`] creates them in Shopify on a code discount (the store's template), at most
//!   250 per asynchronous bulk creation, and is safe to run again (see [`code_for_attempt`]).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tributary_schemas::Advocate;
use tributary_shopify::operations::{
    CODE_DISCOUNT_BY_CODE, REDEEM_CODE_BULK_ADD, REDEEM_CODE_BULK_CREATION,
};
use tributary_shopify::{AdminClient, AdminError, StoreAccess, UserError};

/// Tries per advocate before it is skipped.
pub const ATTEMPTS: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("unknown merge variable {{{{{0}}}}} in the code pattern")]
    UnknownVariable(String),
    #[error("the code pattern has an unclosed {{{{")]
    Unclosed,
    #[error("the code pattern has no {{{{advocate_identifier}}}} and no random variable: advocates would share codes")]
    NotPerAdvocate,
    #[error("the code pattern holds a control or bidirectional formatting character (U+{0:04X})")]
    ControlCharacter(u32),
    #[error("the code pattern gives an empty code for advocate {0}")]
    Empty(String),
    #[error("Shopify refused the code for advocate {advocate}: {reason}")]
    Refused { advocate: String, reason: String },
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

/// Checks a pattern once, before any code is minted: every variable known, every `{{` closed, at
/// least one variable that differs per advocate (`advocate_identifier` or a random one), and no
/// control or bidirectional formatting characters (which could make a code read other than it
/// is).
pub fn validate(pattern: &str) -> Result<(), CodeError> {
    let bidi = |c: char| matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
    if let Some(c) = pattern.chars().find(|&c| c.is_control() || bidi(c)) {
        return Err(CodeError::ControlCharacter(u32::from(c)));
    }
    let per_advocate = ["advocate_identifier", "random_"].iter().any(|name| {
        pattern
            .split("{{")
            .skip(1)
            .any(|variable| variable.trim_start().starts_with(name))
    });
    let names = AdvocateNames {
        identifier: "x",
        first_name: "x",
    };
    render(pattern, names, &mut rand::rngs::mock::StepRng::new(0, 1))?;
    if !per_advocate {
        return Err(CodeError::NotPerAdvocate);
    }
    Ok(())
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

/// The code of `advocate`'s `attempt`-th try. Random parts are drawn from a seed of the store,
/// the advocate and the attempt: an interrupted mint, run again, renders the very codes it may
/// already have created, and recognises them instead of creating more.
pub fn code_for_attempt(
    pattern: &str,
    advocate: AdvocateNames<'_>,
    seed: &str,
    attempt: usize,
) -> Result<String, CodeError> {
    let digest = Sha256::digest(format!("{seed}/{attempt}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    render(
        pattern,
        advocate,
        &mut StdRng::seed_from_u64(u64::from_le_bytes(bytes)),
    )
}

/// The first attempt from `from` whose code `taken` (the store's codes, uppercased) does not
/// hold, with its code; [`CodeError::Collisions`] once [`ATTEMPTS`] are used up.
pub fn next_free(
    pattern: &str,
    advocate: AdvocateNames<'_>,
    seed: &str,
    from: usize,
    taken: impl Fn(&str) -> bool,
) -> Result<(usize, String), CodeError> {
    let mut last = String::new();
    for attempt in from..ATTEMPTS {
        last = code_for_attempt(pattern, advocate, seed, attempt)?;
        if !taken(&last) {
            return Ok((attempt, last));
        }
    }
    Err(CodeError::Collisions {
        advocate: advocate.identifier.to_owned(),
        attempts: ATTEMPTS,
        last,
    })
}

/// Where codes are minted: a store, and the code discount (the template) they are added to.
#[derive(Debug, Clone, Copy)]
pub struct MintTarget<'a> {
    pub store: StoreAccess<'a>,
    pub template_id: &'a str,
    pub pattern: &'a str,
}

/// What a mint did: advocates with their new code, and advocates skipped with the reason.
#[derive(Debug, Default)]
pub struct Minted {
    pub codes: Vec<(Advocate, String)>,
    pub skipped: Vec<(Advocate, CodeError)>,
}

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error(transparent)]
    Pattern(#[from] CodeError),
    #[error(transparent)]
    Admin(#[from] AdminError),
}

/// Shopify's limit of codes per `discountRedeemCodeBulkAdd`.
pub const BULK_LIMIT: usize = 250;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BulkAdded {
    discount_redeem_code_bulk_add: BulkAddPayload,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BulkAddPayload {
    bulk_creation: Option<IdOnly>,
}

#[derive(Deserialize)]
struct IdOnly {
    id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BulkPolled {
    discount_redeem_code_bulk_creation: Option<BulkCreation>,
}

#[derive(Deserialize)]
struct BulkCreation {
    done: bool,
    codes: CodeNodes,
}

#[derive(Deserialize)]
struct CodeNodes {
    nodes: Vec<CreatedCode>,
}

#[derive(Deserialize)]
struct CreatedCode {
    code: String,
    #[serde(default)]
    errors: Vec<UserError>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CodeOwner {
    code_discount_node_by_code: Option<IdOnly>,
}

/// Mints a code for each of `advocates` in Shopify, at most [`BULK_LIMIT`] per bulk creation,
/// each creation polled until done. `held` is every code the store's advocates already have
/// (uppercased); a code Shopify reports taken is tried again with the next attempt, unless the
/// template itself holds it (an earlier, interrupted run of this very mint created it). Calls
/// `progress` with the number of advocates settled (minted or skipped) so far.
pub async fn mint_codes(
    admin: &AdminClient,
    target: MintTarget<'_>,
    advocates: Vec<Advocate>,
    mut held: HashSet<String>,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Minted, MintError> {
    validate(target.pattern)?;
    let mut minted = Minted::default();
    let mut queue: Vec<(Advocate, usize)> = advocates.into_iter().map(|a| (a, 0)).collect();
    while !queue.is_empty() {
        let rest = queue.split_off(queue.len().min(BULK_LIMIT));
        let mut batch = Vec::new();
        for (advocate, from) in std::mem::replace(&mut queue, rest) {
            let names = AdvocateNames {
                identifier: &advocate.identifier,
                first_name: &advocate.first_name,
            };
            let seed = format!("{}/{}", advocate.shop_domain, advocate.id);
            match next_free(target.pattern, names, &seed, from, |c| held.contains(c)) {
                Ok((attempt, code)) => {
                    held.insert(code.clone());
                    batch.push((advocate, attempt, code));
                }
                Err(error) => minted.skipped.push((advocate, error)),
            }
        }
        if batch.is_empty() {
            continue;
        }
        let results = bulk_add(admin, target, batch.iter().map(|(_, _, c)| c.as_str())).await?;
        for (advocate, attempt, code) in batch {
            match results.get(&code).map(Vec::as_slice) {
                Some([]) | None => minted.codes.push((advocate, code)),
                Some(errors) if errors.iter().any(|e| e.code.as_deref() == Some("TAKEN")) => {
                    if owner(admin, target, &code).await?.as_deref() == Some(target.template_id) {
                        minted.codes.push((advocate, code));
                    } else {
                        queue.push((advocate, attempt + 1));
                    }
                }
                Some(errors) => {
                    let reason = errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ");
                    minted.skipped.push((
                        advocate.clone(),
                        CodeError::Refused {
                            advocate: advocate.identifier.clone(),
                            reason,
                        },
                    ));
                }
            }
        }
        progress(minted.codes.len() + minted.skipped.len());
    }
    Ok(minted)
}

/// One bulk creation, polled until done: each code with the errors it met.
async fn bulk_add<'c>(
    admin: &AdminClient,
    target: MintTarget<'_>,
    codes: impl Iterator<Item = &'c str>,
) -> Result<HashMap<String, Vec<UserError>>, AdminError> {
    let codes: Vec<serde_json::Value> = codes.map(|code| json!({ "code": code })).collect();
    let count = codes.len();
    let added: BulkAdded = admin
        .run(
            target.store,
            &REDEEM_CODE_BULK_ADD,
            json!({"discountId": target.template_id, "codes": codes}),
        )
        .await?;
    let Some(creation) = added.discount_redeem_code_bulk_add.bulk_creation else {
        return Err(AdminError::Decode {
            shop: target.store.shop_domain.into(),
            operation: REDEEM_CODE_BULK_ADD.name,
            detail: "no bulk creation and no user errors".into(),
        });
    };
    // Shopify creates the codes in the background; until done, poll without the codes (cheap),
    // then read them once.
    let mut wait = Duration::from_millis(100);
    loop {
        let polled: BulkPolled = admin
            .run(
                target.store,
                &REDEEM_CODE_BULK_CREATION,
                json!({"id": creation.id, "first": 0}),
            )
            .await?;
        if polled
            .discount_redeem_code_bulk_creation
            .is_some_and(|c| c.done)
        {
            break;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
    let done: BulkPolled = admin
        .run(
            target.store,
            &REDEEM_CODE_BULK_CREATION,
            json!({"id": creation.id, "first": count}),
        )
        .await?;
    Ok(done
        .discount_redeem_code_bulk_creation
        .map(|c| c.codes.nodes)
        .unwrap_or_default()
        .into_iter()
        .map(|node| (node.code.to_ascii_uppercase(), node.errors))
        .collect())
}

/// The discount that holds `code`, if any.
async fn owner(
    admin: &AdminClient,
    target: MintTarget<'_>,
    code: &str,
) -> Result<Option<String>, AdminError> {
    let found: CodeOwner = admin
        .run(
            target.store,
            &CODE_DISCOUNT_BY_CODE,
            json!({ "code": code }),
        )
        .await?;
    Ok(found.code_discount_node_by_code.map(|node| node.id))
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
        assert_eq!(validate("SPRING10"), Err(CodeError::NotPerAdvocate));
        assert_eq!(
            validate("{{advocate_first_name}}"),
            Err(CodeError::NotPerAdvocate)
        );
        assert_eq!(
            validate("{{advocate_identifier}}\u{202E}01"),
            Err(CodeError::ControlCharacter(0x202E))
        );
        assert_eq!(
            validate("{{advocate_identifier}}{{random_integer_4}}"),
            Ok(())
        );
    }

    #[test]
    fn a_collision_draws_again_and_five_collisions_skip_the_advocate() {
        let pattern = "{{advocate_identifier}}{{random_integer_4}}";
        let asked = Cell::new(0);
        let first_taken = |code: &str| {
            asked.set(asked.get() + 1);
            asked.get() == 1 && code.starts_with("ANNAK")
        };
        let (attempt, code) = next_free(pattern, ANNA, "s/1", 0, first_taken).unwrap();
        assert_eq!(
            (asked.get(), attempt),
            (2, 1),
            "one retry after the collision"
        );
        assert!(code.starts_with("ANNAK"));
        // The same advocate and attempt always render the same code; another advocate does not.
        assert_eq!(code_for_attempt(pattern, ANNA, "s/1", 1).unwrap(), code);
        assert_ne!(code_for_attempt(pattern, ANNA, "s/2", 1).unwrap(), code);

        let taken: HashSet<&str> = ["ANNAK"].into();
        let asked = Cell::new(0);
        let result = next_free("{{advocate_identifier}}", ANNA, "s/1", 0, |code| {
            asked.set(asked.get() + 1);
            taken.contains(code)
        });
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
