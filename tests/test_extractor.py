"Extractor tests: batch independence, a hook-based per-model reference, every method's formula, layouts, bad input."
import json, math
import numpy as np, pytest, torch
from dataclasses import replace
from interpgen.sampler import PatternDatasetSampler, SignatureDataset, InterpgenError, membership, save_signature_dataset
from interpgen.trainer import SubjectArch, SubjectModel, TrainJob, TrainConfig, SubjectModelTrainer, init_params, unflatten_state, flatten_state
from interpgen.extractor import *

ALL = ['mean', 'std', 'max', 'min', 'sparsity', 'entropy', 'pattern_wise', 'pca:5', 'svd:3', 'kmeans:4', 'fourier:6']

@pytest.fixture(scope='module')
def sd():
    return PatternDatasetSampler(7, 7, seed=0).create_signature_dataset(size=120)

@pytest.fixture(scope='module')
def mixed():
    "Models of several depths, widths, activations and encodings (seeded random weights), plus two trained ones."
    archs = [SubjectArch((12, 7)), SubjectArch((5, 9), 'relu'), SubjectArch((10,), 'gelu'), SubjectArch((6, 6, 6), 'tanh'),
             SubjectArch((8, 3), 'sigmoid', encoding='index'), SubjectArch((4, 11), 'leaky_relu'), SubjectArch((3,), 'gelu')]
    models = [(a, init_params(a, seed=10 + i)) for i, a in enumerate(archs)]
    s = PatternDatasetSampler(7, 7, seed=1)
    jobs = [TrainJob.from_dataset(s.create_dataset(ps, samples_per_pattern=300, seed=i), SubjectArch((12, 7)), seed=i, lr=1e-2)
            for i, ps in enumerate([['palindrome'], ['contains_abc', 'no_repeats']])]
    return models + SubjectModelTrainer(TrainConfig(max_epochs=4, batch_size=32)).fit(jobs)

# ---- batch independence

@pytest.mark.parametrize('dtype,eps', [('float64', 1e-10), ('float32', 2e-5)])
def test_signature_does_not_depend_on_the_batch(sd, mixed, dtype, eps):
    ex = ActivationSignatureExtractor(sd, ALL, on='both', dtype=dtype, models_per_batch=3)
    together = ex.extract(mixed)
    for s1, s2 in zip(together, ex.extract(mixed)):                 # same batches twice: bit-identical
        assert np.array_equal(s1.values, s2.values, equal_nan=True)
    for s1, s2 in zip(together, ex.extract(mixed[::-1])[::-1]):     # other batch mates, other order
        np.testing.assert_allclose(s1.values, s2.values, atol=eps, rtol=0)
    for k, m in enumerate(mixed):                                    # alone: a batch of one
        alone = ex.extract([m])[0]
        np.testing.assert_allclose(together[k].values, alone.values, atol=eps, rtol=0)
        assert alone.layout == together[k].layout

# ---- the independent per-model reference: forward hooks on a SubjectModel and the formulas in numpy

def hooked(arch, flat, seqs, dtype=torch.float64):
    "Per hidden layer `(pre, post)` `[N, w]` and the logit `[N]`, through forward hooks on the model's own modules."
    m = SubjectModel(arch).to(dtype); m.load_state_dict(unflatten_state(flat.to(dtype), arch)); m.eval()
    pre, post = [], []
    hooks = [lin.register_forward_hook(lambda mod, i, o: pre.append(o)) for lin in m.layers]
    hooks.append(m.act.register_forward_hook(lambda mod, i, o: post.append(o)))
    with torch.no_grad(): m(seqs)
    for h in hooks: h.remove()
    return [(z.numpy(), a.numpy()) for z, a in zip(pre[:-1], post)], pre[-1][:, 0].numpy()

def ref_inactive(v, site, act, eps=0.01):
    return np.abs(v) < eps if site == 'post' and act in ('tanh', 'sigmoid') else v <= 0

def ref_entropy(v, B=10):
    "Entropy in bits of numpy's equal-width histogram (float64 edges over [min, max], the last bin closed)."
    v = np.asarray(v, np.float64)
    if v.max() == v.min(): return 0.0
    counts, _ = np.histogram(v, bins=B)
    p = counts[counts > 0] / len(v)
    return float(-(p * np.log2(p)).sum())

def ref_kmeans(v, k, iters=20):
    s = np.sort(v); N = len(v)
    c = np.array([s[(2 * j + 1) * N // (2 * k)] for j in range(k)])
    for _ in range(iters):
        near = np.array([int(np.argmin(np.abs(x - c))) for x in v])  # argmin: ties to the lower (first) centre
        c = np.sort([np.cumsum(v[near == j])[-1] / (near == j).sum() if (near == j).any() else c[j] for j in range(k)])  # summed in probe order
    return c

def ref_spectral(A, k, centred, tol):
    "Per neuron of `A  # [N, w]`: PCA axes (centred) or SVD coordinates (uncentred), by the table's rules."
    N, w = A.shape
    B = A - A.mean(0) if centred else A
    _, S, Vt = np.linalg.svd(B, full_matrices=False)
    out = np.zeros((w, k))
    for c in range(min(k, len(S))):
        if S[c] <= S[0] * max(N, w) * tol: continue
        v = Vt[c] * np.sign(Vt[c][np.argmax(np.abs(Vt[c]))])
        out[:, c] = v if centred else v * S[c] / math.sqrt(N)
    return out

def reference_signature(sd, arch, flat, methods, sites, dtype=torch.float64):
    "The whole signature of one model, neuron by neuron, from hooks and numpy."
    layers, logit = hooked(arch, flat, sd.seqs, dtype)
    mem = membership(sd.seqs, sd.pattern_names); groups = [mem[:, j] for j in range(mem.shape[1])] + [~mem.any(1)]
    tol = torch.finfo(dtype).eps
    mats = [(dict(pre=z.astype(np.float64), post=a.astype(np.float64)), arch.activation) for z, a in layers]
    mats.append((dict(pre=logit[:, None].astype(np.float64), post=logit[:, None].astype(np.float64)), None))
    rows = []
    for M_, act in mats:
        cols = []
        for site in sites:
            A = M_[site]
            for spec in methods:
                name, _, k = spec.partition(':'); k = int(k) if k else None
                per = lambda f: np.array([f(A[:, j]) for j in range(A.shape[1])]).reshape(A.shape[1], -1)
                cols.append({'mean': lambda: per(np.mean), 'std': lambda: per(np.std), 'max': lambda: per(np.max), 'min': lambda: per(np.min),
                             'sparsity': lambda: per(lambda v: ref_inactive(v, site, act).mean()), 'entropy': lambda: per(ref_entropy),
                             'pattern_wise': lambda: per(lambda v: [v[g].mean() if g.any() else np.nan for g in groups]),
                             'fourier': lambda: per(lambda v: np.abs(np.fft.rfft(v))[:k] / len(v)),
                             'kmeans': lambda: per(lambda v: ref_kmeans(v, k)),
                             'pca': lambda: ref_spectral(A, k, True, tol), 'svd': lambda: ref_spectral(A, k, False, tol)}[name]())
        rows.append(np.concatenate(cols, 1))
    return np.concatenate(rows)

@pytest.mark.parametrize('k', [0, 3, 4, 7])
def test_matches_hook_reference_float64(sd, mixed, k):
    arch, flat = (mixed[k].arch, mixed[k].params) if hasattr(mixed[k], 'params') else mixed[k]
    sig = ActivationSignatureExtractor(sd, ALL, on='both', dtype='float64').extract([mixed[k], mixed[1], mixed[5]])[0]
    ref = reference_signature(sd, arch, flat, ALL, ('post', 'pre'))
    assert sig.values.shape == ref.shape == (sum(arch.hidden) + 1, len(sig.layout.columns))
    np.testing.assert_allclose(sig.values, ref.astype(np.float32), atol=2e-6, rtol=1e-6)

def test_matches_hook_reference_float32_default_methods(sd, mixed):
    r = mixed[-1]                                                    # a trained model
    sig = ActivationSignatureExtractor(sd).extract(mixed)[-1]
    ref = reference_signature(sd, r.arch, r.params, DEFAULT_METHODS, ('post',), torch.float32)
    np.testing.assert_allclose(sig.values, ref, atol=2e-5, rtol=1e-5)

def test_kmeans_and_entropy_follow_their_definitions_on_tied_values():
    "Relu-like neurons with many exact ties (repeated zeros, values on bin edges and midpoints): the documented rules, exactly."
    from types import SimpleNamespace
    from interpgen.extractor import _s_kmeans, _s_entropy
    rng = np.random.default_rng(0)
    V = np.maximum(0, rng.integers(-6, 6, (600, 200)) * 0.1 + rng.integers(0, 3, (600, 1)) * 0.05)
    V[:50, :20] = np.linspace(0, 1, 11)[rng.integers(0, 11, (50, 20))]     # values exactly on float64 bin edges
    got_k = _s_kmeans(torch.tensor(V[:, None]), 4, SimpleNamespace(iters=20))[:, 0].numpy()
    got_e = _s_entropy(torch.tensor(V[:, None]), None, SimpleNamespace(bins=10))[:, 0, 0].numpy()
    np.testing.assert_allclose(got_k, np.array([ref_kmeans(v, 4) for v in V]), atol=1e-12, rtol=0)
    np.testing.assert_allclose(got_e, np.array([ref_entropy(v) for v in V]), atol=1e-12, rtol=0)
    # two equal starting centres: the first takes every tied value, the second keeps its place and gets nothing
    assert (V == 0).mean(1).max() > 0.5 and (got_k[:, 0] == got_k[:, 1]).any()

# ---- each method's formula on a hand-made model

@pytest.fixture(scope='module')
def hand():
    "hidden (2,), index encoding: neuron 0 = act(x0 - 1), neuron 1 = act(2 x0 - 2); logit = a0 - 0.5; probes x0 = 0, 1, 2, 3."
    tiny = SignatureDataset(np.array([[0] * 7, [1, 2, 3, 4, 3, 2, 1], [2, 0, 1, 3, 4, 5, 6], [3] * 7]), ['none'] * 4,
                            ['palindrome', 'all_same'], 7, 7, 0)
    def model(act='relu'):
        arch = SubjectArch((2,), act, encoding='index')
        W0 = torch.zeros(2, 7); W0[0, 0], W0[1, 0] = 1, 2
        return arch, flatten_state({'layers.0.weight': W0, 'layers.0.bias': torch.tensor([-1., -2.]),
                                    'layers.1.weight': torch.tensor([[1., 0.]]), 'layers.1.bias': torch.tensor([-0.5])}, arch)
    return tiny, model

def test_each_formula_by_hand(hand):
    tiny, model = hand
    r5 = math.sqrt(5)
    sig = ActivationSignatureExtractor(tiny, ALL[:7] + ['pca:2', 'svd:2', 'kmeans:2', 'fourier:3']).extract([model()])[0]
    expect = {  # neuron 0 reads (0, 0, 1, 2); probes: AAAAAAA (palindrome, all_same), BCDEDCB (palindrome), CABDEFG, DDDDDDD (both)
        'mean': 0.75, 'std': math.sqrt(0.6875), 'max': 2, 'min': 0, 'sparsity': 0.5, 'entropy': 1.5,  # bins 0, 0, 5, 9
        'pattern_wise:palindrome': 2 / 3, 'pattern_wise:all_same': 1, 'pattern_wise:none': 1,
        'pca:pc1': 1 / r5, 'pca:pc2': 0, 'svd:sv1': r5 / 2, 'svd:sv2': 0, 'kmeans:c1': 1 / 3, 'kmeans:c2': 2,
        'fourier:f0': 0.75, 'fourier:f1': r5 / 4, 'fourier:f2': 0.25}
    assert list(sig.layout.columns) == list(expect)
    for c, v in expect.items(): assert sig.get(0, 0, c) == pytest.approx(v, abs=1e-6), c
    assert sig.get(0, 1, 'pca:pc1') == pytest.approx(2 / r5) and sig.get(0, 1, 'svd:sv1') == pytest.approx(r5)
    assert sig.get(0, 1, 'entropy') == pytest.approx(1.5)            # entropy does not see the scale
    assert sig.get('logit', 0, 'mean') == pytest.approx(0.25) and sig.get('logit', 0, 'sparsity') == 0.5
    assert sig.get('logit', 0, 'pca:pc1') == 1.0                     # a one-unit layer: its axis is +1
    for iters, centres in ((0, [0, 2]), (1, [1 / 3, 2])):              # starts at sorted(v)[1], sorted(v)[3]; 1 ties low
        km = ActivationSignatureExtractor(tiny, ['kmeans:2'], kmeans_iters=iters).extract([model()])[0]
        np.testing.assert_allclose(km.get(0, 0), centres)

def test_pre_site_and_sparsity_rules(hand):
    tiny, model = hand
    pre = ActivationSignatureExtractor(tiny, ['mean', 'sparsity', 'min'], on='pre').extract([model()])[0]
    assert pre.layout.columns == ('pre.mean', 'pre.sparsity', 'pre.min')
    np.testing.assert_allclose(pre.get(0, 0), [0.5, 0.5, -1])       # z = (-1, 0, 1, 2): z <= 0 is inactive
    # tanh: post = tanh(-1, 0, 1, 2): only tanh(0) is within eps of 0; the pre site still counts z <= 0
    both = ActivationSignatureExtractor(tiny, ['sparsity'], on='both').extract([model('tanh')])[0]
    np.testing.assert_allclose(both.get(0, 0), [0.25, 0.5])
    s2 = ActivationSignatureExtractor(tiny, ['sparsity'], sparsity_eps=0.8).extract([model('tanh')])[0]
    assert s2.get(0, 0, 'sparsity') == 0.75                           # |tanh(-1)| = |tanh(1)| = 0.76 < 0.8
    sig = ActivationSignatureExtractor(tiny, ['sparsity']).extract([model('sigmoid')])[0]
    assert sig.get(0, 0, 'sparsity') == 0                             # sigmoid(-1) = 0.27 is not within 0.01 of 0

def test_raw_activations_kept_in_row_order(hand):
    tiny, model = hand
    sig = ActivationSignatureExtractor(tiny, keep_raw=True).extract([model()])[0]
    assert sig.raw['post'].tolist() == [[0, 0, 1, 2], [0, 0, 2, 4], [-0.5, -0.5, 0.5, 1.5]]
    assert sig.raw['pre'].tolist() == [[-1, 0, 1, 2], [-2, 0, 2, 4], [-0.5, -0.5, 0.5, 1.5]]
    back = ActivationSignature.from_dict(json.loads(json.dumps(sig.to_dict(raw=True))))
    assert np.array_equal(back.raw['pre'], sig.raw['pre']) and back.layout == sig.layout

def test_empty_pattern_group_is_nan(hand):
    tiny, model = hand
    sd2 = replace(tiny, pattern_names=['palindrome', 'sorted_ascending'], seqs=tiny.seqs[1:3])  # no sorted probe
    sig = ActivationSignatureExtractor(sd2, ['pattern_wise']).extract([model()])[0]
    assert np.isnan(sig.get(0, 0, 'pattern_wise:sorted_ascending')) and sig.get(0, 0, 'pattern_wise:palindrome') == 0

# ---- layout

def test_layout_indexing_numeric_layer_order_and_json(sd):
    arch = SubjectArch((2,) * 11 + (5,))                               # 12 hidden layers: 10 and 11 after 9
    sig = ActivationSignatureExtractor(sd, ['mean', 'pattern_wise', 'fourier:2']).extract([(arch, init_params(arch, 0))])[0]
    lay = sig.layout
    assert [l for l, _ in lay.rows] == sorted(l for l, _ in lay.rows) and lay.rows[-1] == (12, 0)
    assert lay.row_labels[18:24] == ['9.0', '9.1', '10.0', '10.1', '11.0', '11.1']
    assert sig.layer(11).shape == (5, len(lay.columns)) and sig.layer('logit').shape == (1, len(lay.columns))
    assert sig.get(layer=11, neuron=4, column='pattern_wise:palindrome') == sig.values[26, lay.columns.index('pattern_wise:palindrome')]
    assert sig.get(column='fourier').shape == (28, 2) and sig.get(layer=10, column='mean').shape == (2,)
    d = json.loads(json.dumps(sig.to_dict()))
    assert d['layout']['rows'][20] == [10, 0] and d['layout']['signature_sha256'] == sd.sha256
    assert d['layout']['config']['methods'] == ['mean', 'pattern_wise', 'fourier:2']
    back = ActivationSignature.from_dict(d)
    assert np.array_equal(back.values, sig.values) and back.layout == lay   # float32 values survive JSON exactly
    with pytest.raises(InterpgenError, match="layer=13 is not allowed"): sig.layer(13)
    with pytest.raises(InterpgenError, match="neuron=2 is not allowed"): sig.get(3, 2)
    with pytest.raises(InterpgenError, match="column='pca' is not allowed"): sig.get(column='pca')

def test_same_methods_same_columns_rows_follow_architecture(sd, mixed):
    sigs = ActivationSignatureExtractor(sd, ['std', 'kmeans:2'], on='both').extract(mixed)
    assert len({s.layout.columns for s in sigs}) == 1
    for s, m in zip(sigs, mixed):
        arch = m.arch if hasattr(m, 'arch') else m[0]
        assert s.values.shape == (sum(arch.hidden) + 1, 6) and s.layout.arch == arch

# ---- bad input

def test_tampered_signature_file_refused(sd, tmp_path):
    f = tmp_path / 'sig.json'; h = save_signature_dataset(sd, f)
    assert ActivationSignatureExtractor(f, expected_sha256=h).sha256 == h
    assert ActivationSignatureExtractor(str(f)).sd.seqs.tolist() == sd.seqs.tolist()
    with pytest.raises(InterpgenError, match='expected'): ActivationSignatureExtractor(f, expected_sha256='0' * 64)
    d = json.loads(f.read_text()); d['drawn_for'][0] = 'none'; f.write_text(json.dumps(d))
    with pytest.raises(InterpgenError, match='was changed after it was written'): ActivationSignatureExtractor(f)

@pytest.mark.parametrize('methods,msg', [
    (['mean', 'median'], "methods='median' is not allowed: one of ('mean'"),
    (['pca'], "methods='pca' is not allowed: 'pca:k' with k an integer from 1 to 120"),
    (['kmeans:0'], "methods='kmeans:0'"), (['svd:x'], "methods='svd:x'"), (['kmeans:121'], "methods='kmeans:121'"),
    (['fourier:62'], "'fourier:k' with k an integer from 1 to 61 (for 120 probes)"),
    (['std:2'], "'std' without a size"), (['mean', 'mean'], 'each method at most once'), ([], 'at least one of'),
    ('mean,,std', "methods='' is not allowed")])
def test_bad_methods(sd, methods, msg):
    with pytest.raises(InterpgenError) as e: ActivationSignatureExtractor(sd, methods)
    assert msg in str(e.value)

def test_bad_options_and_models(sd, mixed):
    with pytest.raises(InterpgenError, match="on='all' is not allowed"): ActivationSignatureExtractor(sd, on='all')
    with pytest.raises(InterpgenError, match="dtype='float16'"): ActivationSignatureExtractor(sd, dtype='float16')
    ex = ActivationSignatureExtractor(sd)
    with pytest.raises(InterpgenError, match=r"models\[1\]"): ex.extract([mixed[0], 'model'])
    with pytest.raises(InterpgenError, match=r"models\[0\]=.*flat parameters"): ex.extract([(SubjectArch(), torch.zeros(5))])
    small = SubjectArch((4,), vocab_size=5, seq_len=7)
    with pytest.raises(InterpgenError, match=r"models\[0\].arch=\(5, 7\)"): ex.extract([(small, init_params(small, 0))])
    with pytest.raises(InterpgenError, match='at least one model'): ex.extract([])
    with pytest.raises(InterpgenError, match='one depth, activation'): capture_activations(mixed[:3], sd.seqs)

def test_subject_model_input_and_bench_rows(sd, mixed):
    r = mixed[-1]
    ex = ActivationSignatureExtractor(sd, ['mean', 'entropy'])
    assert np.array_equal(ex.extract([r.model()])[0].values, ex.extract([r])[0].values)
    rows = bench_extractor(n_models=8, methods=['mean', 'pca:2'], log=lambda *a: None)
    assert len(rows) == 1 and rows[0]['stage'] == 'signatures' and rows[0]['models'] == 8 and rows[0]['columns'] == 3
    assert rows[0]['seconds'] > 0 and rows[0]['peak_mb'] >= 0
