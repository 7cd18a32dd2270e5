//! The Merkle tree of RFC 6962 §2.1 (as RFC 9162 §2.1 restates it): tree heads,
//! inclusion proofs and consistency proofs, and their verification.
//!
//! - A leaf is `SHA-256(0x00 ‖ record)`, an interior node `SHA-256(0x01 ‖ left ‖ right)`;
//!   the two prefixes keep a leaf from ever passing for a node.
//! - A tree of `n > 1` leaves splits at `k`, the largest power of two below `n`: the
//!   left subtree holds the first `k` leaves and is always complete. (A midpoint split
//!   would also give a tree, and one no other implementation agrees with.)
//! - The empty tree's head is `SHA-256("")`.
//!
//! Proofs are built from leaf hashes held in memory ([`inclusion_proof`],
//! [`consistency_proof`]); verification needs only the proof and the heads, so an auditor
//! with one checkpoint can check any later one ([`verify_inclusion`],
//! [`verify_consistency`], RFC 9162 §2.1.3.2 and §2.1.4.2). The tests pin the published
//! Certificate Transparency vectors.

use sha2::{Digest, Sha256};

/// A SHA-256 digest: a leaf, a node or a tree head.
pub type Hash = [u8; 32];

const LEAF_PREFIX: u8 = 0x00;
const NODE_PREFIX: u8 = 0x01;

/// The hash of a leaf holding `record`.
pub fn leaf_hash(record: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([LEAF_PREFIX]);
    hasher.update(record);
    hasher.finalize().into()
}

/// The hash of an interior node over its two children.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([NODE_PREFIX]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The head of the empty tree: `SHA-256` of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two strictly below `n` (`n` ≥ 2): where a tree of `n` leaves splits.
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The head of the tree whose leaf hashes are `leaves` (RFC 6962's `MTH`).
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The running head of an append-only tree: the heads of its complete subtrees, largest
/// (leftmost) first, one per set bit of the size, so a writer keeps O(log n) hashes instead
/// of every leaf and still knows the tree's head after each append.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// `(leaves, head)` of each complete subtree, sizes strictly decreasing.
    subtrees: Vec<(u64, Hash)>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many leaves the tree holds.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// `(leaves, head)` of each complete subtree, largest first.
    pub fn subtrees(&self) -> &[(u64, Hash)] {
        &self.subtrees
    }

    /// The frontier made of `subtrees` (as [`Self::subtrees`] returns them), or `None` if
    /// they are not a frontier: sizes must be powers of two, strictly decreasing.
    pub fn from_subtrees(subtrees: Vec<(u64, Hash)>) -> Option<Self> {
        let shaped =
            subtrees.iter().all(|(n, _)| n.is_power_of_two()) && subtrees.windows(2).all(|pair| pair[0].0 > pair[1].0);
        let size = subtrees.iter().try_fold(0u64, |sum, (n, _)| sum.checked_add(*n))?;
        shaped.then_some(Self { size, subtrees })
    }

    /// Appends one leaf hash; equal-sized neighbours merge as a binary counter carries.
    pub fn push(&mut self, leaf: Hash) {
        let mut carry = (1u64, leaf);
        while let Some(&(size, head)) = self.subtrees.last() {
            if size != carry.0 {
                break;
            }
            self.subtrees.pop();
            carry = (size * 2, node_hash(&head, &carry.1));
        }
        self.subtrees.push(carry);
        self.size += 1;
    }

    /// The head of the tree: the subtrees folded from the right, which is where RFC 6962
    /// splits a tree whose size is not a power of two.
    pub fn root(&self) -> Hash {
        let mut subtrees = self.subtrees.iter().rev();
        let Some(&(_, mut head)) = subtrees.next() else {
            return empty_root();
        };
        for (_, left) in subtrees {
            head = node_hash(left, &head);
        }
        head
    }
}

/// The proof that leaf `index` is in the tree of `leaves` (RFC 6962's `PATH`), nearest
/// sibling first; `None` if there is no such leaf.
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Option<Vec<Hash>> {
    if index >= leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    path(index, leaves, &mut proof);
    Some(proof)
}

fn path(index: usize, leaves: &[Hash], proof: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if index < k {
        path(index, &leaves[..k], proof);
        proof.push(root(&leaves[k..]));
    } else {
        path(index - k, &leaves[k..], proof);
        proof.push(root(&leaves[..k]));
    }
}

/// The proof that the tree of the first `old_size` leaves is a prefix of the tree of
/// `leaves` (RFC 6962's `PROOF`); empty when the sizes are equal or `old_size` is 0 (every
/// tree extends the empty one), `None` if `old_size` exceeds the tree.
pub fn consistency_proof(leaves: &[Hash], old_size: usize) -> Option<Vec<Hash>> {
    if old_size > leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    if old_size > 0 {
        subproof(old_size, leaves, true, &mut proof);
    }
    Some(proof)
}

fn subproof(m: usize, leaves: &[Hash], complete: bool, proof: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !complete {
            proof.push(root(leaves));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, &leaves[..k], complete, proof);
        proof.push(root(&leaves[k..]));
    } else {
        subproof(m - k, &leaves[k..], false, proof);
        proof.push(root(&leaves[..k]));
    }
}

/// Whether `proof` shows that `leaf` is leaf `index` of the tree of `size` leaves whose
/// head is `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
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

/// Whether `proof` shows that the tree of `old_size` leaves with head `old_root` is a
/// prefix of the tree of `new_size` leaves with head `new_root` (RFC 9162 §2.1.4.2; equal
/// sizes need an empty proof and equal heads, and any tree extends the empty one).
pub fn verify_consistency(old_size: u64, new_size: u64, old_root: &Hash, new_root: &Hash, proof: &[Hash]) -> bool {
    if old_size > new_size {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    if old_size == 0 {
        return proof.is_empty() && *old_root == empty_root();
    }
    let Some((first, rest)) = proof.split_first() else {
        return false;
    };
    // A complete old tree is a node of the new one: its head starts the path.
    let (start, rest) = if old_size.is_power_of_two() {
        (old_root, proof)
    } else {
        (first, rest)
    };
    let (mut f, mut s) = (old_size - 1, new_size - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*start, *start);
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
    s == 0 && fr == *old_root && sr == *new_root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(text: &str) -> Hash {
        hex::decode(text).unwrap().try_into().unwrap()
    }

    /// The Certificate Transparency test leaves (RFC 6962 reference implementation).
    fn ct_leaves() -> Vec<Hash> {
        [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|data| leaf_hash(&hex::decode(data).unwrap()))
        .collect()
    }

    /// Published heads of the trees of the first 0..=8 CT leaves.
    const CT_ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    /// Published hashes of the complete subtrees of the 8-leaf CT tree, by level, left to
    /// right (transparency-dev/merkle `testonly.NodeHashes`).
    fn ct_nodes() -> Vec<Vec<Hash>> {
        [
            vec![
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
                "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
            ],
            vec![
                "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            ],
            vec![
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
            vec!["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
        ]
        .into_iter()
        .map(|level| level.into_iter().map(h).collect())
        .collect()
    }

    #[test]
    fn heads_match_the_published_certificate_transparency_roots() {
        let leaves = ct_leaves();
        assert_eq!(empty_root(), h(CT_ROOTS[0]));
        for size in 0..=leaves.len() {
            assert_eq!(root(&leaves[..size]), h(CT_ROOTS[size]), "size {size}");
        }
        // Every published complete subtree, too.
        let nodes = ct_nodes();
        assert_eq!(nodes[0], leaves);
        for (level, hashes) in nodes.iter().enumerate() {
            for (i, node) in hashes.iter().enumerate() {
                let width = 1 << level;
                assert_eq!(
                    root(&leaves[i * width..(i + 1) * width]),
                    *node,
                    "level {level} node {i}"
                );
            }
        }
    }

    #[test]
    fn the_split_is_the_largest_power_of_two_below_n() {
        for (n, k) in [(2, 1), (3, 2), (4, 2), (5, 4), (7, 4), (8, 4), (9, 8), (1000, 512)] {
            assert_eq!(split(n), k, "n = {n}");
        }
    }

    #[test]
    fn proofs_match_the_published_vectors() {
        let leaves = ct_leaves();
        let n = ct_nodes();
        // Inclusion (RFC 6962 reference tests): (leaf, tree size, path).
        let inclusion: [(usize, usize, Vec<Hash>); 5] = [
            (0, 1, vec![]),
            (0, 8, vec![n[0][1], n[1][1], n[2][1]]),
            (5, 8, vec![n[0][4], n[1][3], n[2][0]]),
            (2, 3, vec![n[1][0]]),
            (1, 5, vec![n[0][0], n[1][1], n[0][4]]),
        ];
        for (index, size, expected) in inclusion {
            let tree = &leaves[..size];
            assert_eq!(
                inclusion_proof(tree, index).unwrap(),
                expected,
                "leaf {index} of {size}"
            );
            assert!(verify_inclusion(
                &leaves[index],
                index as u64,
                size as u64,
                &expected,
                &root(tree)
            ));
        }
        // Consistency: (old size, new size, proof).
        let consistency: [(usize, usize, Vec<Hash>); 4] = [
            (1, 1, vec![]),
            (1, 8, vec![n[0][1], n[1][1], n[2][1]]),
            (6, 8, vec![n[1][2], n[1][3], n[2][0]]),
            (2, 5, vec![n[1][1], n[0][4]]),
        ];
        for (old, new, expected) in consistency {
            let tree = &leaves[..new];
            assert_eq!(consistency_proof(tree, old).unwrap(), expected, "{old} → {new}");
            assert!(verify_consistency(
                old as u64,
                new as u64,
                &root(&leaves[..old]),
                &root(tree),
                &expected
            ));
        }
    }

    /// Leaves 0..n of a larger tree, so that every shape of the recursion occurs.
    fn many(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&(i as u32).to_be_bytes())).collect()
    }

    // A proof binds a leaf or an old head to a (size, head) pair; it cannot tell which size
    // goes with a head (a proof for 5 leaves may verify against size 6 with the 5-leaf
    // head). That binding is the signed checkpoint's job, so sizes are not tampered here.
    #[test]
    fn every_inclusion_proof_verifies_and_every_tampered_one_fails() {
        let all = many(33);
        for size in 1..=all.len() {
            let tree = &all[..size];
            let head = root(tree);
            for index in 0..size {
                let proof = inclusion_proof(tree, index).unwrap();
                let (i, n) = (index as u64, size as u64);
                assert!(verify_inclusion(&tree[index], i, n, &proof, &head), "{index} of {size}");
                // Another leaf, index or size; a changed, missing or extra hash: refused.
                let other = leaf_hash(b"not in the tree");
                assert!(!verify_inclusion(&other, i, n, &proof, &head));
                if size > 1 {
                    assert!(!verify_inclusion(&tree[index], (i + 1) % n, n, &proof, &head));
                }
                assert!(!verify_inclusion(
                    &tree[index],
                    i,
                    n,
                    &proof,
                    &leaf_hash(b"another head")
                ));
                for k in 0..proof.len() {
                    let mut changed = proof.clone();
                    changed[k][0] ^= 1;
                    assert!(!verify_inclusion(&tree[index], i, n, &changed, &head));
                }
                if !proof.is_empty() {
                    assert!(!verify_inclusion(&tree[index], i, n, &proof[..proof.len() - 1], &head));
                }
                let mut longer = proof.clone();
                longer.push(head);
                assert!(!verify_inclusion(&tree[index], i, n, &longer, &head));
            }
            assert!(inclusion_proof(tree, size).is_none());
            assert!(!verify_inclusion(&tree[0], size as u64, size as u64, &[], &head));
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_every_tampered_one_fails() {
        let all = many(33);
        for new in 1..=all.len() {
            let new_head = root(&all[..new]);
            for old in 0..=new {
                let old_head = root(&all[..old]);
                let proof = consistency_proof(&all[..new], old).unwrap();
                let (m, n) = (old as u64, new as u64);
                assert!(verify_consistency(m, n, &old_head, &new_head, &proof), "{old} → {new}");
                // A rewritten history (another old or new head), a changed or missing hash:
                // refused. (Every tree extends the empty one: from size 0 nothing binds the
                // new head.)
                let forged = leaf_hash(b"rewritten history");
                assert!(!verify_consistency(m, n, &forged, &new_head, &proof), "{old} → {new}");
                if old > 0 {
                    assert!(!verify_consistency(m, n, &old_head, &forged, &proof), "{old} → {new}");
                }
                if old > 0 && old < new {
                    for k in 0..proof.len() {
                        let mut changed = proof.clone();
                        changed[k][31] ^= 0x80;
                        assert!(!verify_consistency(m, n, &old_head, &new_head, &changed));
                    }
                    assert!(!verify_consistency(
                        m,
                        n,
                        &old_head,
                        &new_head,
                        &proof[..proof.len() - 1]
                    ));
                }
            }
            assert!(consistency_proof(&all[..new], new + 1).is_none());
            assert!(!verify_consistency(
                new as u64 + 1,
                new as u64,
                &new_head,
                &new_head,
                &[]
            ));
        }
    }

    #[test]
    fn frontier_heads_equal_the_recursive_heads() {
        let leaves: Vec<Hash> = (0u32..70).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut frontier = Frontier::new();
        assert_eq!(frontier.root(), empty_root());
        for n in 1..=leaves.len() {
            frontier.push(leaves[n - 1]);
            assert_eq!(frontier.size(), n as u64);
            assert_eq!(frontier.root(), root(&leaves[..n]), "size {n}");
        }
    }

    #[test]
    fn a_frontier_rebuilt_from_its_subtrees_goes_on_as_before() {
        let leaves = ct_leaves();
        for cut in 0..leaves.len() {
            let mut whole = Frontier::new();
            leaves[..cut].iter().for_each(|l| whole.push(*l));
            let mut rebuilt = Frontier::from_subtrees(whole.subtrees().to_vec()).unwrap();
            assert_eq!(rebuilt, whole);
            leaves[cut..].iter().for_each(|l| rebuilt.push(*l));
            assert_eq!(rebuilt.root(), root(&leaves), "cut at {cut}");
        }
        let h = leaves[0];
        assert!(Frontier::from_subtrees(vec![(3, h)]).is_none(), "not a power of two");
        assert!(Frontier::from_subtrees(vec![(2, h), (4, h)]).is_none(), "increasing");
        assert!(Frontier::from_subtrees(vec![(2, h), (2, h)]).is_none(), "repeated");
    }

    #[test]
    fn frontier_matches_the_published_roots() {
        let mut frontier = Frontier::new();
        for (size, leaf) in ct_leaves().into_iter().enumerate() {
            frontier.push(leaf);
            assert_eq!(frontier.root(), h(CT_ROOTS[size + 1]), "size {}", size + 1);
        }
    }
}
