"Property tests for the sampler: labels are the predicates, negatives are clean, draws are reproducible."
import json, subprocess, sys
from functools import lru_cache
import numpy as np, pytest
from hypothesis import given, settings, HealthCheck, strategies as st
from interpgen.sampler import *

SPACES = [(7, 7), (10, 5), (4, 5), (26, 12)]

@lru_cache(None)
def sampler(v, l): return PatternDatasetSampler(v, l, seed=3)

def usable(v, l): return [n for n in sampler(v, l).pattern_names if n not in sampler(v, l).problems]

@st.composite
def requests(draw):
    v, l = draw(st.sampled_from(SPACES))
    names = usable(v, l)
    include = draw(st.lists(st.sampled_from(names), min_size=1, max_size=5, unique=True))
    return dict(v=v, l=l, include=include, k=draw(st.integers(0, 60)), ratio=draw(st.sampled_from([0, 0.5, 1.0, 2.0])),
                hard=draw(st.sampled_from([0, 0.3, 1.0])), seed=draw(st.integers(0, 2**31)))

def make(r):
    return sampler(r['v'], r['l']).create_dataset(r['include'], samples_per_pattern=r['k'], negative_ratio=r['ratio'],
                                                  hard_negative_share=r['hard'], seed=r['seed'], if_short='take_all',
                                                  max_total_examples=None)

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_labels_equal_predicates_and_negatives_are_clean(r):
    ds = make(r)
    inc = membership(ds.seqs, ds.include) if len(ds) else np.zeros((0, len(ds.include)), bool)
    assert (ds.labels == inc.any(1)).all()                      # label 1 exactly when an included pattern holds
    assert not inc[ds.labels == 0].any()                        # negatives satisfy none of the included patterns
    assert (ds.membership == membership(ds.seqs, ds.pattern_names)).all() if len(ds) else True
    assert len(np.unique(ds.seqs, axis=0)) == len(ds)           # no duplicates (take_all never repeats)
    hard = ds.source <= -2                                      # hard negatives satisfy the excluded pattern they came from
    for j in np.unique(-2 - ds.source[hard]): assert ds.membership[ds.source == -2 - j, j].all()

@settings(max_examples=15, deadline=None)
@given(requests())
def test_same_seed_same_dataset(r):
    a, b = make(r), make(r)
    assert (a.seqs == b.seqs).all() and (a.labels == b.labels).all() and a.notes == b.notes

def test_positive_counts_match_requests():
    ds = sampler(7, 7).create_dataset(['palindrome', 'no_repeats', 'mountain_pattern'], samples_per_pattern=100, seed=1)
    for n in ds.include: assert (ds.source == ds.pattern_names.index(n)).sum() == 100
    assert len(ds) == 450 and (ds.labels == 0).sum() == 150

def test_max_total_examples_caps_the_dataset():
    ds = sampler(7, 7).create_dataset(['palindrome', 'starts_with'], samples_per_pattern=5000, max_total_examples=2500)
    assert len(ds) <= 2500 and len(ds) >= 2490

@pytest.mark.parametrize('v,l', [(7, 7), (10, 5), (4, 5), (5, 4), (3, 6)])
def test_exact_counts_match_enumeration(v, l):
    allseqs = SequenceSpace(v, l).all()
    for p in get_patterns():
        if p.count is None or p.problem(v, l): continue
        assert p.count(v, l) == int(p(allseqs).sum()), p.name

@pytest.mark.parametrize('v,l', [(7, 7), (10, 5), (26, 12)])
def test_pattern_samplers_only_draw_positives(v, l):
    rng, space = np.random.default_rng(0), SequenceSpace(v, l)
    for p in get_patterns():
        if p.problem(v, l): continue
        assert p(draw_positives(p, rng, 500, space)).all(), p.name

def test_reference_definitions_are_fixed_over_7x7():
    "No two patterns share a positive set, none is universal, each has at least two positives (reference defect 1)."
    m = sampler(7, 7).all_membership
    assert len({m[:, j].tobytes() for j in range(m.shape[1])}) == m.shape[1]
    assert (m.sum(0) >= 2).all() and (m.sum(0) < len(m)).all()

def test_user_pattern_works_everywhere():
    p = Pattern('starts_and_ends_b', 'First and last letter are B.', fn=lambda s: (s[:, 0] == 1) & (s[:, -1] == 1))
    register_pattern(p)
    try:
        s = PatternDatasetSampler(7, 7, seed=0)
        ds = s.create_dataset(['starts_and_ends_b'], samples_per_pattern=50, seed=0)
        assert ds.membership[ds.labels == 1, -1].all() and not ds.membership[ds.labels == 0, -1].any()
        big = PatternDatasetSampler(12, 9, seed=0, patterns=['palindrome', 'starts_and_ends_b'])  # not enumerable: rejection
        assert big.space.enumerable is False
        db = big.create_dataset(['starts_and_ends_b'], samples_per_pattern=30, seed=0)
        assert p(db.seqs[db.labels == 1]).all() and len(db) == 45
        with pytest.raises(InterpgenError, match='not yet in PATTERNS'): register_pattern(p)
    finally: PATTERNS.pop('starts_and_ends_b')

@pytest.mark.parametrize('kwargs,msg', [
    (dict(include_patterns=['nope']), "include_patterns='nope'"),
    (dict(include_patterns=[]), 'at least one pattern'),
    (dict(include_patterns=['palindrome'], samples_per_pattern=-1), 'samples_per_pattern=-1'),
    (dict(include_patterns=['palindrome'], negative_ratio=-0.5), 'negative_ratio=-0.5'),
    (dict(include_patterns=['palindrome'], if_short='maybe'), "if_short='maybe'"),
    (dict(include_patterns=['all_same'], samples_per_pattern=8), "if_short='repeat'"),
])
def test_bad_input_names_the_argument(kwargs, msg):
    with pytest.raises(InterpgenError, match=msg.replace('(', r'\(')): sampler(7, 7).create_dataset(**kwargs)

def test_vocab_too_small_for_a_pattern():
    with pytest.raises(InterpgenError, match='needs the letter C'): PatternDatasetSampler(2, 5).create_dataset(['contains_abc'])
    with pytest.raises(InterpgenError, match='vocab_size=1'): PatternDatasetSampler(1, 5)

def test_signature_dataset_hash_is_checked(tmp_path):
    sd = sampler(7, 7).create_signature_dataset(size=120, seed=5)
    f = tmp_path / 'sig.json'; h = save_signature_dataset(sd, f)
    assert load_signature_dataset(f, expected_sha256=h).sha256 == h
    d = json.loads(f.read_text()); d['seed'] = 6; f.write_text(json.dumps(d))
    with pytest.raises(InterpgenError, match='was changed'): load_signature_dataset(f)
    with pytest.raises(InterpgenError, match='existing signature dataset'): load_signature_dataset(tmp_path / 'none.json')

def test_signature_dataset_covers_every_pattern_in_big_space():
    sd = sampler(26, 12).create_signature_dataset(size=100)
    assert sd.membership.any(0).all() and len(np.unique(sd.seqs, axis=0)) == 100

def run(*args):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120)

def test_cli_sample_and_sigset(tmp_path):
    r = run('interpgen_sample', '--patterns', 'palindrome,no_repeats', '--n', '30', '--out', str(tmp_path / 'ds.json'))
    assert r.returncode == 0, r.stderr
    recs = json.loads((tmp_path / 'ds.json').read_text())
    assert len(recs) == 90 and sum(r['label'] for r in recs) == 60
    r = run('interpgen_sigset', '--out', str(tmp_path / 'sig.json'), '--size', '90', '--seed', '2')
    assert r.returncode == 0 and load_signature_dataset(tmp_path / 'sig.json').seed == 2

def test_cli_bad_input_is_one_line(tmp_path):
    r = run('interpgen_sample', '--patterns', 'palindrom')
    assert r.returncode == 2 and "include_patterns='palindrom' is not allowed" in r.stderr and 'Traceback' not in r.stderr
