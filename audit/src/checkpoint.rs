//! Signed checkpoints of the log: its origin, size, head and time, as a C2SP
//! `tlog-checkpoint` inside a C2SP `signed-note` with an Ed25519 signature, and the keys
//! that sign and verify them.
//!
//! The text formats are the ones transparency logs share, so a checkpoint can be read (and
//! its signature checked) by other tools:
//! - checkpoint body: `<origin>\n<size>\n<base64 head>\n` then extension lines (ours:
//!   `time <RFC 3339>`);
//! - signature line after a blank line: `— <key name> <base64(key id ‖ signature)>`;
//! - verifier key: `<name>+<key id, 8 hex digits>+<base64(0x01 ‖ public key)>`;
//! - signer key (the file `--audit-key` names): `PRIVATE+KEY+<name>+<key id>+<base64(0x01 ‖ seed)>`.
//!
//! The key id is the first four bytes of `SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key)`.
//! The signer key is held by whoever runs the server (and the auditor), never kept in the
//! store; only the verifier key is needed to check the log.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::merkle::Hash;
use crate::{Error, Result};

/// The algorithm byte of Ed25519 keys in signed notes.
const ED25519: u8 = 0x01;
const SIGNATURE_PREFIX: &str = "\u{2014} ";
const TIME_PREFIX: &str = "time ";
const CUT_PREFIX: &str = "retention-cut ";

/// The key that signs checkpoints (from `--audit-key FILE`).
pub struct SignerKey {
    name: String,
    key: SigningKey,
}

impl std::fmt::Debug for SignerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("SignerKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The key that checks checkpoint signatures: public, printed when a key is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    key: VerifyingKey,
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('+') || name.chars().any(char::is_whitespace) {
        return Err(Error::Key(format!(
            "the key name '{name}' must be non-empty, without '+' or spaces (for example 'proxima.example.org/audit')"
        )));
    }
    Ok(())
}

fn key_id(name: &str, public: &VerifyingKey) -> [u8; 4] {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update(b"\n");
    hasher.update([ED25519]);
    hasher.update(public.as_bytes());
    let digest = hasher.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// `(name, key id, 32 key bytes)` of `<name>+<hex id>+<base64(0x01 ‖ key)>`.
fn parse_key_fields(text: &str, what: &str) -> Result<(String, [u8; 4], [u8; 32])> {
    let bad = |why: &str| Error::Key(format!("not a {what}: {why}"));
    let mut fields = text.trim().splitn(3, '+');
    let (Some(name), Some(id), Some(key)) = (fields.next(), fields.next(), fields.next()) else {
        return Err(bad("expected <name>+<key id>+<key>"));
    };
    check_name(name)?;
    let id = u32::from_str_radix(id, 16)
        .ok()
        .filter(|_| id.len() == 8)
        .ok_or_else(|| bad("the key id is not 8 hex digits"))?
        .to_be_bytes();
    let bytes = BASE64
        .decode(key)
        .map_err(|e| bad(&format!("the key is not base64: {e}")))?;
    match bytes.split_first() {
        Some((&ED25519, key)) if key.len() == 32 => {
            Ok((name.to_string(), id, key.try_into().expect("checked to be 32 bytes")))
        }
        Some((&ED25519, _)) => Err(bad("an Ed25519 key has 32 bytes")),
        _ => Err(bad("only Ed25519 keys (algorithm 0x01) are supported")),
    }
}

impl SignerKey {
    /// A new random key named `name` (the checkpoints' origin).
    pub fn generate(name: &str) -> Result<Self> {
        check_name(name)?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::Key(format!("no randomness for a key: {e}")))?;
        Ok(Self {
            name: name.to_string(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Parses `PRIVATE+KEY+<name>+<id>+<base64>`; the id must match the key.
    pub fn parse(text: &str) -> Result<Self> {
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| Error::Key("not an audit signing key: it must start with PRIVATE+KEY+".into()))?;
        let (name, id, seed) = parse_key_fields(rest, "audit signing key")?;
        let key = SigningKey::from_bytes(&seed);
        if key_id(&name, &key.verifying_key()) != id {
            return Err(Error::Key("the signing key's id does not match its key".into()));
        }
        Ok(Self { name, key })
    }

    /// The key as the text of a key file.
    pub fn encode(&self) -> String {
        let mut bytes = vec![ED25519];
        bytes.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            hex8(key_id(&self.name, &self.key.verifying_key())),
            BASE64.encode(bytes)
        )
    }

    /// The name, which is also the origin of every checkpoint it signs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching verifier key.
    pub fn verifier(&self) -> VerifierKey {
        VerifierKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// `checkpoint` as a signed note.
    pub fn sign(&self, checkpoint: &Checkpoint) -> String {
        let body = checkpoint.body();
        let signature = self.key.sign(body.as_bytes());
        let mut blob = key_id(&self.name, &self.key.verifying_key()).to_vec();
        blob.extend_from_slice(&signature.to_bytes());
        format!("{body}\n{SIGNATURE_PREFIX}{} {}\n", self.name, BASE64.encode(blob))
    }
}

fn hex8(id: [u8; 4]) -> String {
    format!("{:08x}", u32::from_be_bytes(id))
}

impl VerifierKey {
    /// Parses `<name>+<id>+<base64(0x01 ‖ key)>`; the id must match the key.
    pub fn parse(text: &str) -> Result<Self> {
        let (name, id, bytes) = parse_key_fields(text, "audit verifier key")?;
        let key =
            VerifyingKey::from_bytes(&bytes).map_err(|e| Error::Key(format!("not an Ed25519 public key: {e}")))?;
        if key_id(&name, &key) != id {
            return Err(Error::Key("the verifier key's id does not match its key".into()));
        }
        Ok(Self { name, key })
    }

    /// The key's name: every checkpoint it verifies has this origin.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks the signed note `note` and returns the checkpoint it carries. The note must
    /// carry a valid signature by this key, and its origin must be the key's name.
    pub fn open(&self, note: &str) -> Result<Checkpoint> {
        let bad = |why: String| Error::Checkpoint(why);
        let (body, signatures) = note
            .split_once("\n\n")
            .ok_or_else(|| bad("not a signed note: no blank line before the signatures".into()))?;
        let body = format!("{body}\n");
        let id = key_id(&self.name, &self.key);
        let mut verified = false;
        for line in signatures.lines().filter(|l| !l.is_empty()) {
            let rest = line
                .strip_prefix(SIGNATURE_PREFIX)
                .ok_or_else(|| bad(format!("not a signature line: '{line}'")))?;
            let (name, blob) = rest
                .split_once(' ')
                .ok_or_else(|| bad(format!("not a signature line: '{line}'")))?;
            let blob = BASE64
                .decode(blob)
                .map_err(|e| bad(format!("the signature is not base64: {e}")))?;
            if name != self.name || blob.len() != 4 + 64 || blob[..4] != id {
                continue; // another key's signature: not ours to check
            }
            let signature = Signature::from_slice(&blob[4..]).map_err(|e| bad(format!("bad signature: {e}")))?;
            self.key.verify_strict(body.as_bytes(), &signature).map_err(|_| {
                bad("the signature does not match the checkpoint: it was altered or signed by another key".into())
            })?;
            verified = true;
        }
        if !verified {
            return Err(bad(format!("no signature by the key '{}'", self.name)));
        }
        let checkpoint = Checkpoint::parse_body(&body)?;
        if checkpoint.origin != self.name {
            return Err(bad(format!(
                "the checkpoint is of the log '{}', not '{}'",
                checkpoint.origin, self.name
            )));
        }
        Ok(checkpoint)
    }

    /// The key as text, to configure verification.
    pub fn encode(&self) -> String {
        let mut bytes = vec![ED25519];
        bytes.extend_from_slice(self.key.as_bytes());
        format!(
            "{}+{}+{}",
            self.name,
            hex8(key_id(&self.name, &self.key)),
            BASE64.encode(bytes)
        )
    }
}

/// What a checkpoint states: the log `origin` held `size` records whose tree head was
/// `root`, at `time`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's name (the signer key's name).
    pub origin: String,
    /// How many records the tree held.
    pub size: u64,
    /// The tree head over those records.
    pub root: Hash,
    /// When the checkpoint was made, RFC 3339.
    pub time: String,
    /// Set on the note that authorises a retention cut at `size` (extension line
    /// `retention-cut <RFC 3339>`): the records before it, all written before that time,
    /// were deleted. A plain checkpoint cannot stand in for one.
    pub retention_cut: Option<String>,
}

impl Checkpoint {
    /// The unsigned text.
    pub fn body(&self) -> String {
        let mut body = format!(
            "{}\n{}\n{}\n{TIME_PREFIX}{}\n",
            self.origin,
            self.size,
            BASE64.encode(self.root),
            self.time
        );
        if let Some(before) = &self.retention_cut {
            body.push_str(&format!("{CUT_PREFIX}{before}\n"));
        }
        body
    }

    fn parse_body(body: &str) -> Result<Self> {
        let bad = |why: &str| Error::Checkpoint(format!("not a checkpoint: {why}"));
        let mut lines = body.lines();
        let origin = lines.next().filter(|l| !l.is_empty()).ok_or_else(|| bad("no origin"))?;
        let size = lines
            .next()
            .and_then(|l| l.parse::<u64>().ok())
            .ok_or_else(|| bad("the second line is not a tree size"))?;
        let root: Hash = lines
            .next()
            .and_then(|l| BASE64.decode(l).ok())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("the third line is not a base64 SHA-256 head"))?;
        let extensions: Vec<&str> = lines.collect();
        let extension = |prefix: &str| {
            extensions
                .iter()
                .find_map(|l| l.strip_prefix(prefix))
                .map(str::to_string)
        };
        Ok(Self {
            origin: origin.to_string(),
            size,
            root,
            time: extension(TIME_PREFIX).unwrap_or_default(),
            retention_cut: extension(CUT_PREFIX),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(size: u64) -> Checkpoint {
        Checkpoint {
            origin: "proxima.test/audit".into(),
            size,
            root: crate::merkle::leaf_hash(b"x"),
            time: "2026-12-02T10:00:00Z".into(),
            retention_cut: None,
        }
    }

    #[test]
    fn keys_round_trip_and_sign() {
        let signer = SignerKey::generate("proxima.test/audit").unwrap();
        let again = SignerKey::parse(&signer.encode()).unwrap();
        let verifier = VerifierKey::parse(&signer.verifier().encode()).unwrap();
        assert_eq!(verifier, again.verifier());
        let note = again.sign(&checkpoint(5));
        assert_eq!(verifier.open(&note).unwrap(), checkpoint(5));
        assert!(
            format!("{signer:?}").find(&signer.encode()[20..]).is_none(),
            "Debug shows the secret"
        );
    }

    #[test]
    fn the_key_id_is_the_signed_note_one() {
        // C2SP signed-note: id = SHA-256(name ‖ "\n" ‖ 0x01 ‖ key)[..4], checked by hand here
        // from its definition rather than from our own encoder.
        let signer = SignerKey::generate("example.com/log").unwrap();
        let public = signer.verifier().key;
        let mut input = b"example.com/log\n\x01".to_vec();
        input.extend_from_slice(public.as_bytes());
        let digest = Sha256::digest(&input);
        let expected = format!("{:02x}{:02x}{:02x}{:02x}", digest[0], digest[1], digest[2], digest[3]);
        assert_eq!(signer.verifier().encode().split('+').nth(1).unwrap(), expected);
    }

    #[test]
    fn altered_notes_and_other_keys_are_refused() {
        let signer = SignerKey::generate("proxima.test/audit").unwrap();
        let note = signer.sign(&checkpoint(5));
        let verifier = signer.verifier();
        let altered = note.replacen("\n5\n", "\n6\n", 1);
        assert!(
            verifier
                .open(&altered)
                .unwrap_err()
                .to_string()
                .contains("does not match")
        );
        let other = SignerKey::generate("proxima.test/audit").unwrap().verifier();
        assert!(other.open(&note).unwrap_err().to_string().contains("no signature"));
        assert!(verifier.open("proxima.test/audit\n5\n").is_err());
        assert!(VerifierKey::parse("name+00000000+AQ==").is_err());
        assert!(SignerKey::parse("bad").is_err());
        assert!(SignerKey::generate("has space").is_err());
    }
}
