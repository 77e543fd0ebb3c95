//! The audit log's format as a transparency log, shared by the daemon (which appends and signs)
//! and `watcher-verify` (which checks), so that the verifier needs nothing of the daemon.
//!
//! - Leaves and nodes are hashed as in RFC 6962 (`0x00 || leaf`, `0x01 || left || right`).
//! - [`Frontier`] is the compact range of a prefix of the log: the roots of its perfect
//!   subtrees, enough to append and to compute the root in O(log n).
//! - Proofs are RFC 6962's audit paths and consistency proofs, checked with RFC 9162's
//!   algorithms.
//! - Checkpoints are C2SP `tlog-checkpoint` bodies in C2SP `signed-note`s, signed with Ed25519.
use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

pub fn hex(h: &Hash) -> String {
    hex::encode(h)
}

/// The hash in hex, written into `buf` (no allocation).
pub fn hex_str<'a>(h: &Hash, buf: &'a mut [u8; 64]) -> &'a str {
    // A table per nibble: the hex crate's iterator was a tenth of the verifier's time.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in h.iter().enumerate() {
        buf[2 * i] = DIGITS[usize::from(b >> 4)];
        buf[2 * i + 1] = DIGITS[usize::from(b & 15)];
    }
    std::str::from_utf8(buf).unwrap_or_default()
}

/// A hash from 64 hex digits (either case), or None.
pub fn unhex(s: &str) -> Option<Hash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// The compact range `[0, size)`: one hash per set bit of `size`, largest subtree first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    pub size: u64,
    pub hashes: Vec<Hash>,
}

impl Frontier {
    /// A frontier from its parts, if the number of hashes fits the size.
    pub fn from_parts(size: u64, hashes: Vec<Hash>) -> Option<Frontier> {
        (hashes.len() == size.count_ones() as usize).then_some(Frontier { size, hashes })
    }

    pub fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        // Each trailing one bit of the old size is a subtree of the new leaf's size to merge.
        let mut s = self.size;
        while s & 1 == 1 {
            let left = self.hashes.pop().expect("a set bit has its subtree");
            h = node_hash(&left, &h);
            s >>= 1;
        }
        self.hashes.push(h);
        self.size += 1;
    }

    pub fn root(&self) -> Hash {
        let mut it = self.hashes.iter().rev();
        let Some(last) = it.next() else {
            return empty_root();
        };
        it.fold(*last, |acc, h| node_hash(h, &acc))
    }
}

/// The largest power of two below `n` (n > 1).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// The root of a whole list of leaf hashes (RFC 6962 MTH).
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

/// The audit path of leaf `index` in the tree of `leaves` (RFC 6962 PATH).
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Vec<Hash> {
    let n = leaves.len();
    if n <= 1 || index >= n {
        return Vec::new();
    }
    let k = split(n);
    if index < k {
        let mut p = inclusion_proof(&leaves[..k], index);
        p.push(root_of(&leaves[k..]));
        p
    } else {
        let mut p = inclusion_proof(&leaves[k..], index - k);
        p.push(root_of(&leaves[..k]));
        p
    }
}

/// The consistency proof from the tree of the first `m` leaves to the tree of all of them
/// (RFC 6962 PROOF).
pub fn consistency_proof(leaves: &[Hash], m: usize) -> Vec<Hash> {
    fn sub(m: usize, d: &[Hash], complete: bool) -> Vec<Hash> {
        let n = d.len();
        if m == n {
            return if complete {
                Vec::new()
            } else {
                vec![root_of(d)]
            };
        }
        let k = split(n);
        if m <= k {
            let mut p = sub(m, &d[..k], complete);
            p.push(root_of(&d[k..]));
            p
        } else {
            let mut p = sub(m - k, &d[k..], false);
            p.push(root_of(&d[..k]));
            p
        }
    }
    if m == 0 || m > leaves.len() {
        return Vec::new();
    }
    sub(m, leaves, true)
}

/// A tree whose first `prefix.size` leaves were pruned: only the prefix's frontier (the roots
/// of its complete subtrees) and the leaves after it are known. Proofs that need no node inside
/// the pruned part can still be made; the others are None.
pub struct PrunedTree<'a> {
    pub prefix: &'a Frontier,
    /// Leaves `prefix.size ..`.
    pub leaves: &'a [Hash],
}

impl PrunedTree<'_> {
    fn size(&self) -> u64 {
        self.prefix.size + self.leaves.len() as u64
    }

    /// MTH of leaves `[a, b)`, if it can be known.
    pub fn node(&self, a: u64, b: u64) -> Option<Hash> {
        let p = self.prefix.size;
        if a >= b || b > self.size() {
            return None;
        }
        if a >= p {
            return Some(root_of(&self.leaves[(a - p) as usize..(b - p) as usize]));
        }
        // The frontier's subtrees, largest first, from leaf 0.
        let mut start = 0u64;
        let (mut a_edge, mut b_edge) = (a == 0, b == p);
        for (bit, h) in (0..64)
            .rev()
            .filter(|i| p >> i & 1 == 1)
            .zip(&self.prefix.hashes)
        {
            let end = start + (1u64 << bit);
            if (start, end) == (a, b) {
                return Some(*h);
            }
            a_edge |= end == a;
            b_edge |= end == b;
            start = end;
        }
        // Inside the prefix, only runs of whole frontier subtrees are known (and MTH splits
        // such a run at its first subtree, so the recursion stays on them).
        if b - a == 1 || !a_edge || (b <= p && !b_edge) {
            return None;
        }
        let k = split((b - a) as usize) as u64;
        Some(node_hash(&self.node(a, a + k)?, &self.node(a + k, b)?))
    }

    /// The audit path of leaf `index` in the tree of the first `n` leaves.
    pub fn inclusion_proof(&self, index: u64, n: u64) -> Option<Vec<Hash>> {
        fn path(t: &PrunedTree, m: u64, a: u64, b: u64) -> Option<Vec<Hash>> {
            if b - a <= 1 {
                return Some(Vec::new());
            }
            let k = split((b - a) as usize) as u64;
            if m < k {
                let mut p = path(t, m, a, a + k)?;
                p.push(t.node(a + k, b)?);
                Some(p)
            } else {
                let mut p = path(t, m - k, a + k, b)?;
                p.push(t.node(a, a + k)?);
                Some(p)
            }
        }
        if index >= n || n > self.size() || index < self.prefix.size {
            return None;
        }
        path(self, index, 0, n)
    }

    /// The consistency proof from the tree of `m` leaves to the tree of `n`.
    pub fn consistency_proof(&self, m: u64, n: u64) -> Option<Vec<Hash>> {
        fn sub(t: &PrunedTree, m: u64, a: u64, b: u64, complete: bool) -> Option<Vec<Hash>> {
            if m == b - a {
                return Some(if complete {
                    Vec::new()
                } else {
                    vec![t.node(a, b)?]
                });
            }
            let k = split((b - a) as usize) as u64;
            if m <= k {
                let mut p = sub(t, m, a, a + k, complete)?;
                p.push(t.node(a + k, b)?);
                Some(p)
            } else {
                let mut p = sub(t, m - k, a + k, b, false)?;
                p.push(t.node(a, a + k)?);
                Some(p)
            }
        }
        if m == 0 || m > n || n > self.size() {
            return None;
        }
        sub(self, m, 0, n, true)
    }
}

/// RFC 9162 2.1.3.2.
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s, mut r) = (index, size - 1, *leaf);
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// RFC 9162 2.1.4.2.
pub fn verify_consistency(m: u64, n: u64, old: &Hash, new: &Hash, proof: &[Hash]) -> bool {
    if m == 0 || m > n {
        return false;
    }
    if m == n {
        return proof.is_empty() && old == new;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if m.is_power_of_two() {
        path.push(*old);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut f, mut s) = (m - 1, n - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    fr == *old && sr == *new && s == 0
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoteError {
    #[error("the checkpoint is not a signed note: {0}")]
    Format(&'static str),
    #[error("the verifier key is malformed: {0}")]
    Key(&'static str),
    #[error("no signature by key {0} verifies (signed by another key, or the text was changed)")]
    Unverified(String),
}

/// A checkpoint: the origin (the log's name), its size and root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The checkpoint body (C2SP tlog-checkpoint), which the note signs.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    fn parse(body: &str) -> Result<Checkpoint, NoteError> {
        let mut lines = body.split('\n');
        let origin = lines.next().filter(|o| !o.is_empty());
        let size = lines.next().and_then(|s| s.parse::<u64>().ok());
        let root = lines
            .next()
            .and_then(|r| B64.decode(r).ok())
            .and_then(|r| <Hash>::try_from(r.as_slice()).ok());
        match (origin, size, root) {
            (Some(o), Some(size), Some(root)) => Ok(Checkpoint {
                origin: o.to_string(),
                size,
                root,
            }),
            _ => Err(NoteError::Format("origin, size and root lines")),
        }
    }
}

const ED25519: u8 = 0x01;

fn key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ED25519]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// The signing half, kept by the daemon.
pub struct NoteSigner {
    name: String,
    key: SigningKey,
}

impl NoteSigner {
    /// `name`: the key name (also the log's origin); `seed`: the 32-byte Ed25519 secret.
    pub fn new(name: &str, seed: &[u8; 32]) -> NoteSigner {
        NoteSigner {
            name: name.to_string(),
            key: SigningKey::from_bytes(seed),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verifier key, `<name>+<key id hex>+<base64(0x01 || public key)>`.
    pub fn vkey(&self) -> String {
        let public = self.key.verifying_key().to_bytes();
        let mut k = vec![ED25519];
        k.extend_from_slice(&public);
        let id = key_id(&self.name, &public);
        format!(
            "{}+{:08x}+{}",
            self.name,
            u32::from_be_bytes(id),
            B64.encode(k)
        )
    }

    /// The signed note of a checkpoint.
    pub fn sign(&self, c: &Checkpoint) -> String {
        let body = c.body();
        let sig = self.key.sign(body.as_bytes());
        let mut blob = key_id(&self.name, &self.key.verifying_key().to_bytes()).to_vec();
        blob.extend_from_slice(&sig.to_bytes());
        format!("{body}\n\u{2014} {} {}\n", self.name, B64.encode(blob))
    }
}

/// The verifying half, from a verifier key.
#[derive(Debug, Clone)]
pub struct NoteVerifier {
    name: String,
    id: [u8; 4],
    key: VerifyingKey,
}

impl NoteVerifier {
    pub fn parse(vkey: &str) -> Result<NoteVerifier, NoteError> {
        let mut parts = vkey.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::Key("want <name>+<id>+<key>"));
        };
        let raw = B64
            .decode(key)
            .map_err(|_| NoteError::Key("the key is not base64"))?;
        if raw.len() != 33 || raw[0] != ED25519 {
            return Err(NoteError::Key("not an Ed25519 key"));
        }
        let public: [u8; 32] = raw[1..].try_into().expect("33 - 1 bytes");
        let key = VerifyingKey::from_bytes(&public)
            .map_err(|_| NoteError::Key("not a point on the curve"))?;
        let want = key_id(name, &public);
        if u32::from_str_radix(id, 16).ok() != Some(u32::from_be_bytes(want)) {
            return Err(NoteError::Key("the key id does not match the key"));
        }
        Ok(NoteVerifier {
            name: name.to_string(),
            id: want,
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The checkpoint of a signed note, if a signature of this key verifies it.
    pub fn open(&self, note: &str) -> Result<Checkpoint, NoteError> {
        let Some(split) = note.find("\n\n") else {
            return Err(NoteError::Format("no blank line before the signatures"));
        };
        let (body, sigs) = (&note[..split + 1], &note[split + 2..]);
        let c = Checkpoint::parse(body)?;
        for line in sigs.lines() {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                return Err(NoteError::Format(
                    "a signature line does not start with an em dash",
                ));
            };
            let Some((name, blob)) = rest.split_once(' ') else {
                return Err(NoteError::Format("a signature line has no signature"));
            };
            let Ok(blob) = B64.decode(blob) else {
                return Err(NoteError::Format("a signature is not base64"));
            };
            if name != self.name || blob.len() != 68 || blob[..4] != self.id {
                continue;
            }
            let sig = ed25519_dalek::Signature::from_slice(&blob[4..])
                .map_err(|_| NoteError::Format("a signature is malformed"))?;
            if self.key.verify_strict(body.as_bytes(), &sig).is_ok() {
                return Ok(c);
            }
        }
        Err(NoteError::Unverified(self.name.clone()))
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn proofs_over_a_pruned_prefix_are_the_whole_trees_proofs_where_they_can_be_made() {
        let l: Vec<Hash> = (0..24u8).map(|i| leaf_hash(&[i])).collect();
        for p in 0..l.len() {
            let mut f = Frontier::default();
            for h in &l[..p] {
                f.push(*h);
            }
            let t = PrunedTree {
                prefix: &f,
                leaves: &l[p..],
            };
            for n in 1..=l.len() {
                if n >= p {
                    assert_eq!(t.node(0, n as u64), Some(root_of(&l[..n])), "p {p} n {n}");
                }
                for i in p..n {
                    let proof = t.inclusion_proof(i as u64, n as u64);
                    if let Some(proof) = proof {
                        assert_eq!(proof, inclusion_proof(&l[..n], i), "p {p} n {n} i {i}");
                    }
                }
                for m in p.max(1)..=n {
                    if let Some(proof) = t.consistency_proof(m as u64, n as u64) {
                        assert_eq!(proof, consistency_proof(&l[..n], m), "p {p} m {m} n {n}");
                    }
                }
            }
            // The last retained leaf of the whole tree and the prefix's own tree always prove.
            let n = l.len() as u64;
            if p < l.len() {
                assert!(t.inclusion_proof(n - 1, n).is_some(), "p {p}");
            }
            if p > 0 {
                assert!(t.consistency_proof(p as u64, n).is_some(), "p {p}");
            }
        }
    }

    use super::*;

    /// RFC 6962's test leaves (as in the certificate-transparency test suites).
    fn leaves() -> Vec<Hash> {
        let data: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        data.iter().map(|d| leaf_hash(d)).collect()
    }

    #[test]
    fn roots_match_the_rfc_6962_vectors() {
        let want = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let l = leaves();
        let mut f = Frontier::default();
        for (i, w) in want.iter().enumerate() {
            f.push(l[i]);
            assert_eq!(hex(&root_of(&l[..=i])), *w, "root of {}", i + 1);
            assert_eq!(hex(&f.root()), *w, "frontier root of {}", i + 1);
        }
        assert_eq!(
            hex(&empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn every_proof_verifies_and_no_altered_one_does() {
        let l: Vec<Hash> = (0u32..40).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for n in 1..=l.len() {
            let root = root_of(&l[..n]);
            for i in 0..n {
                let p = inclusion_proof(&l[..n], i);
                assert!(
                    verify_inclusion(i as u64, n as u64, &l[i], &p, &root),
                    "{i} in {n}"
                );
                let other = l[(i + 1) % l.len()];
                assert!(!verify_inclusion(i as u64, n as u64, &other, &p, &root));
                if let Some(first) = p.first() {
                    let mut bad = p.clone();
                    bad[0] = node_hash(first, first);
                    assert!(!verify_inclusion(i as u64, n as u64, &l[i], &bad, &root));
                }
            }
            for m in 1..=n {
                let old = root_of(&l[..m]);
                let p = consistency_proof(&l[..n], m);
                assert!(
                    verify_consistency(m as u64, n as u64, &old, &root, &p),
                    "{m} to {n}"
                );
                if m < n {
                    let wrong = root_of(&l[1..=m]);
                    assert!(!verify_consistency(m as u64, n as u64, &wrong, &root, &p));
                }
            }
        }
    }

    #[test]
    fn notes_verify_with_their_key_only() {
        let s = NoteSigner::new("watcher/host", &[7; 32]);
        let other = NoteSigner::new("watcher/host", &[8; 32]);
        let c = Checkpoint {
            origin: "watcher/host".into(),
            size: 12,
            root: leaf_hash(b"x"),
        };
        let note = s.sign(&c);
        assert!(note.starts_with("watcher/host\n12\n"), "{note}");
        let v = NoteVerifier::parse(&s.vkey()).unwrap();
        assert_eq!(v.open(&note).unwrap(), c);
        assert!(matches!(
            v.open(&other.sign(&c)),
            Err(NoteError::Unverified(_))
        ));
        let edited = note.replacen("\n12\n", "\n13\n", 1);
        assert!(v.open(&edited).is_err());
        assert!(NoteVerifier::parse("watcher/host+00000000+AQ==").is_err());
        let vk = s.vkey();
        let wrong_id = format!(
            "{}+deadbeef+{}",
            "watcher/host",
            vk.rsplit('+').next().unwrap()
        );
        assert!(NoteVerifier::parse(&wrong_id).is_err());
    }
}
