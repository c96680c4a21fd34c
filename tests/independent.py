"""An independent check of what a zoo's records claim about their models.

Nothing here imports interpgen: the patterns are written again from their descriptions, the models run through a
numpy forward pass of the stored weights, and the sequences are drawn afresh (none from the record's own data or
the signature probes), so a claim that holds here holds for data no model saw, measured by code that did not
make it. The zoo is read with zarr alone.
"""
import json
import numpy as np
import zarr
from scipy.special import erf

V, L = 7, 7
VOWELS = {0, 4}                                                        # A, E (I, O, U are not among A..G)


def _all_sequences() -> np.ndarray:
    "Every sequence of 7 letters A..G, code order (the first letter most significant): int8 [823543, 7]."
    codes = np.arange(V ** L)
    return np.stack([(codes // V ** (L - 1 - i)) % V for i in range(L)], 1).astype(np.int8)


def _mountain(s):
    peak = s.argmax(1); ok = (peak > 0) & (peak < L - 1)
    d = np.diff(s.astype(int), axis=1); pos = np.arange(L - 1)[None]
    rising, falling = pos < peak[:, None], pos >= peak[:, None]
    return ok & np.where(rising, d > 0, True).all(1) & np.where(falling, d < 0, True).all(1)


def _own_patterns(s) -> dict:
    "Each pattern's predicate, from its plain-English description, over int sequences `s  # [n, 7]`."
    d = np.diff(s.astype(int), axis=1); vow = np.isin(s, list(VOWELS))
    counts = np.stack([(s == a).sum(1) for a in range(V)], 1)
    pairs = [(0, 1), (2, 3), (4, 5)]
    abc = np.zeros(len(s), bool)
    for i in range(L - 2): abc |= (s[:, i] == 0) & (s[:, i + 1] == 1) & (s[:, i + 2] == 2)
    return dict(
        all_same=(counts == L).any(1), palindrome=(s == s[:, ::-1]).all(1), sorted_ascending=(d >= 0).all(1),
        sorted_descending=(d <= 0).all(1),
        alternating=(s[:, 0] != s[:, 1]) & (s[:, ::2] == s[:, [0]]).all(1) & (s[:, 1::2] == s[:, [1]]).all(1),
        contains_abc=abc, starts_with=s[:, 0] == 0, ends_with=s[:, -1] == 0, no_repeats=(counts <= 1).all(1),
        has_majority=(counts > L / 2).any(1),
        increasing_pairs=np.all([s[:, a] < s[:, b] for a, b in pairs], 0),
        decreasing_pairs=np.all([s[:, a] > s[:, b] for a, b in pairs], 0),
        vowel_consonant=(vow[:, 1:] != vow[:, :-1]).all(1), first_last_match=s[:, 0] == s[:, -1], mountain_pattern=_mountain(s))


class Space:
    "All 823,543 sequences with every pattern's membership, from the definitions above."
    def __init__(self):
        self.seqs = _all_sequences()
        self.member = _own_patterns(self.seqs)

    def code(self, seqs) -> np.ndarray:
        return (np.asarray(seqs, np.int64) * V ** np.arange(L - 1, -1, -1)).sum(1)


def forward(arch:dict, flat:np.ndarray, seqs:np.ndarray) -> np.ndarray:
    "Logits of a stored subject model in float64: one-hot features (position-major), `Linear -> act` per hidden layer, `Linear`."
    assert arch['encoding'] == 'onehot' and arch['vocab_size'] == V and arch['seq_len'] == L
    x = np.zeros((len(seqs), L * V)); x[np.arange(len(seqs))[:, None], np.arange(L) * V + seqs] = 1.0
    dims, k = [L * V, *arch['hidden'], 1], 0
    act = {'relu': lambda z: np.maximum(z, 0), 'gelu': lambda z: 0.5 * z * (1 + erf(z / np.sqrt(2))),
           'tanh': np.tanh, 'sigmoid': lambda z: 1 / (1 + np.exp(-z)), 'leaky_relu': lambda z: np.where(z > 0, z, 0.01 * z)}[arch['activation']]
    for l, (i, o) in enumerate(zip(dims[:-1], dims[1:])):
        W = flat[k:k + i * o].reshape(i, o).astype(np.float64); k += i * o
        b = flat[k:k + o].astype(np.float64); k += o
        x = x @ W + b
        if l < len(dims) - 2: x = act(x)
    assert k == len(flat)
    return x[:, 0]


def read_zoo(path):
    "The zoo's records as plain dicts (meta, weights, dataset sequences) and its signature probes, read with zarr."
    g = zarr.open_group(str(path), mode='r')
    metas, hashes = g['meta'][:], g['hash'][:]
    recs = []
    for i in range(len(metas)):
        if not str(hashes[i]): continue                                  # not written (or not made)
        m = json.loads(str(metas[i])); n, P = int(g['n_examples'][i]), int(g['n_params'][i])
        recs.append(dict(index=i, meta=m, seqs=g['dataset/seqs'][i, :n].astype(np.int64),
                         params={k: g[f'{k}/params'][i, :P] for k in ('subject', 'modified') if f'{k}/params' in g}))
    probes = np.array([[ord(c) - 65 for c in s] for s in g.attrs['signature']['dataset']['sequences']])
    return recs, probes, dict(g.attrs['config'])


def fresh_measures(space:Space, rec:dict, probes:np.ndarray, n:int=400, seed:int=0) -> dict:
    "Per model of the record, on a fresh sample: recall on each labelled pattern, accuracy on negatives (half uniform, half hard)."
    rng = np.random.default_rng([seed, rec['index']])
    seen = np.zeros(len(space.seqs), bool); seen[space.code(rec['seqs'])] = True; seen[space.code(probes)] = True
    inc = rec['meta']['patterns']
    any_inc = np.any([space.member[p] for p in inc], 0)
    pick = lambda ok, k: space.seqs[rng.choice(np.flatnonzero(ok & ~seen), size=min(k, int((ok & ~seen).sum())), replace=False)]
    pos = {p: pick(space.member[p], n) for p in inc}
    others = [p for p in space.member if p not in inc and (space.member[p] & ~any_inc & ~seen).any()]
    hard_from = rng.choice(others, size=n // 2)
    hard = np.concatenate([pick(space.member[p] & ~any_inc, int((hard_from == p).sum())) for p in others])
    neg = np.concatenate([pick(~any_inc, n - len(hard)), hard])
    assert not np.any([_own_patterns(neg)[p] for p in inc])              # negatives: none of the labelled patterns
    out = {}
    for which, flat in rec['params'].items():
        said = lambda s: forward(rec['meta']['arch'], flat, s) > 0
        out[which] = dict(recall={p: float(said(s).mean()) for p, s in pos.items()}, n={p: len(s) for p, s in pos.items()},
                          negative_accuracy=float((~said(neg)).mean()), n_negatives=len(neg))
    return out
