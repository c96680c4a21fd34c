"Trainer tests that need processes, files or many models: workers, persistence, per-model independence, bad input."
import numpy as np, pytest, torch
from dataclasses import replace
from interpgen.sampler import PatternDatasetSampler, InterpgenError
from interpgen.trainer import *
from zoo_helpers import running as _running

@pytest.fixture(scope='module')
def jobs():
    s = PatternDatasetSampler(7, 7, seed=0)
    sets = [['palindrome', 'sorted_ascending'], ['contains_abc', 'no_repeats'], ['vowel_consonant', 'has_majority'], ['starts_with', 'mountain_pattern']]
    archs = [SubjectArch((16, 16)), SubjectArch((24, 8)), SubjectArch((12,), 'gelu'), SubjectArch((10, 10, 10), 'tanh', encoding='index')]
    return [TrainJob.from_dataset(s.create_dataset(sets[i % 4], samples_per_pattern=150, seed=i), archs[i % 4], seed=i, lr=3e-3)
            for i in range(12)]

CFG = TrainConfig(max_epochs=6, models_per_batch=4)

def test_workers_do_not_change_results(jobs):
    one = SubjectModelTrainer(CFG).fit(jobs, workers=1)
    two = SubjectModelTrainer(CFG).fit(jobs, workers=2)
    for a, b in zip(one, two):
        assert torch.equal(a.params, b.params) and a.metrics == b.metrics and a.history == b.history

def test_model_in_batch_matches_model_alone_float64(jobs):
    cfg = replace(CFG, dtype='float64', models_per_batch=64)
    together = SubjectModelTrainer(cfg).fit(jobs)
    for k in (0, 5, 10):
        alone = SubjectModelTrainer(cfg).fit([jobs[k]])[0]
        assert (together[k].params - alone.params).abs().max() < 1e-9

def test_mixed_batch_in_bfloat16_matches_models_alone():
    "Depths 6-9, relu and gelu in one batch, stopping at different epochs (stopped models ride along until compaction)."
    jobs, cfg = bench_jobs('reference', 24)
    cfg = replace(cfg, matmul_dtype='bfloat16', max_epochs=12, patience=2)
    assert len(plan_batches(jobs, cfg.models_per_batch)) == 1
    assert len({(len(j.arch.hidden), j.arch.activation) for j in jobs}) >= 6
    together = SubjectModelTrainer(cfg).fit(jobs)
    assert len({r.epochs for r in together}) >= 3
    for r in together: assert len(r.history['val_loss']) == r.epochs and not np.isnan(r.history['val_loss']).any()
    for k in (0, 7, 15, 23):
        alone = SubjectModelTrainer(cfg).fit([jobs[k]])[0]
        assert (together[k].params - alone.params).abs().max() < 1e-5
        assert together[k].epochs == alone.epochs and together[k].metrics['acc'] == alone.metrics['acc']
        assert np.allclose(together[k].history['val_loss'], alone.history['val_loss'], atol=1e-5)

def test_workers_keep_more_matmul_kernels():
    import os
    assert worker_pool(2).submit(os.getenv, 'ONEDNN_PRIMITIVE_CACHE_CAPACITY').result() is not None

def test_stored_model_is_the_evaluated_model(jobs, tmp_path):
    r = SubjectModelTrainer(CFG).fit(jobs[:2])[1]
    save_subject_model(r.model(), tmp_path / 'm.safetensors', metadata={'seed': r.seed})
    m = load_subject_model(tmp_path / 'm.safetensors')
    te = split_indices(len(jobs[1].seqs), jobs[1].seed, CFG.split)[2]
    assert float((m.predict(jobs[1].seqs[te]) == jobs[1].labels[te]).mean()) == r.metrics['acc']

def test_early_stopping_restores_best_epoch(jobs):
    cfg = replace(CFG, max_epochs=40, patience=2)
    for r in SubjectModelTrainer(cfg).fit(jobs[:4]):
        vl = r.history['val_loss']
        assert r.best_epoch == int(np.argmin(vl)) + 1
        assert r.epochs == 40 or r.epochs - r.best_epoch == 2

def test_clean_test_labels_are_used(jobs):
    j = jobs[0]
    flipped = replace(j, labels=1 - j.labels, test_labels=j.labels)   # trains on inverted labels, tested on the clean ones
    r = SubjectModelTrainer(replace(CFG, max_epochs=15)).fit([flipped])[0]
    te = split_indices(len(j.seqs), j.seed, CFG.split)[2]
    pred = r.model().predict(j.seqs[te])
    assert r.metrics['acc'] == float((pred == j.labels[te]).mean())          # scored on the clean labels
    assert r.history['val_acc'][r.best_epoch - 1] > 0.5 > r.metrics['acc']    # while it learned the inverted ones

def test_per_pattern_accuracy_uses_membership(jobs):
    r = SubjectModelTrainer(CFG).fit(jobs[:1])[0]
    pp, n = r.metrics['per_pattern'], r.metrics['per_pattern_n']
    assert set(pp) == set(jobs[0].pattern_names) and n['palindrome'] > 0 and 0 <= pp['palindrome'] <= 1

@pytest.mark.parametrize('q,levels', [('binary', 2), ('ternary', 3), ('int4', 15), ('int8', 255)])
def test_quantized_weights_are_stored_and_evaluated(jobs, q, levels):
    r = SubjectModelTrainer(replace(CFG, quantization=q)).fit(jobs[:1])[0]
    for k, v in r.state_dict.items(): assert len(torch.unique(v)) <= levels, k
    assert 'float' in r.metrics and r.quantization == q
    te = split_indices(len(jobs[0].seqs), jobs[0].seed, CFG.split)[2]
    assert float((r.model().predict(jobs[0].seqs[te]) == jobs[0].labels[te]).mean()) == r.metrics['acc']

def test_dropout_trains_deterministically(jobs):
    js = [replace(j, arch=SubjectArch((16, 16), dropout=0.2)) for j in jobs[:3]]
    a, b = SubjectModelTrainer(CFG).fit(js), SubjectModelTrainer(CFG).fit(js)
    assert all(torch.equal(x.params, y.params) for x, y in zip(a, b))

@pytest.mark.parametrize('change,msg', [
    (dict(labels=np.full(10, 2)), 'labels'),
    (dict(seqs=np.zeros((5, 6), int)), 'sequences of length 7'),
    (dict(lr=0), 'jobs[0].lr=0'),
    (dict(init=torch.zeros(3)), 'flat parameters'),
])
def test_bad_jobs_fail_before_training(jobs, change, msg):
    with pytest.raises(InterpgenError, match=msg.replace('[', r'\[').replace(']', r'\]')):
        SubjectModelTrainer(CFG).fit([replace(jobs[0], **change)])

def test_bad_arch_and_config():
    with pytest.raises(InterpgenError, match="activation='swish'"): SubjectArch(activation='swish')
    with pytest.raises(InterpgenError, match="encoding='bytes'"): SubjectArch(encoding='bytes')
    with pytest.raises(InterpgenError, match='hidden'): SubjectArch(hidden=(-3,))
    with pytest.raises(InterpgenError, match='max_epochs=0'): TrainConfig(max_epochs=0)
    with pytest.raises(InterpgenError, match="dtype='float16'"): TrainConfig(dtype='float16')

def test_pool_workers_share_idle_cores():
    "A lone task in a two-worker pool may use both cores; the counts return to zero afterwards."
    pool = worker_pool(2)
    assert pool.submit(pool_threads, 1).result() == 2
    assert list(pool.map(pool_threads, [1])) == [2]
    assert list(pool.state) == [0, 0]

@pytest.mark.skipif(not __import__('os').path.exists('/proc/self/stat'), reason='reads /proc')
def test_a_stopped_pool_leaves_no_process_and_the_next_pool_works():
    "`terminate_pools` returns once its workers and their fork server are gone; a new pool then starts and runs tasks."
    from multiprocessing import forkserver
    from interpgen.trainer import _worker_ready
    for _ in range(2):
        pool = worker_pool(2); list(pool.map(_worker_ready, range(4)))
        pids = list(pool._processes) + [forkserver._forkserver._forkserver_pid]
        assert len(pids) == 3 and all(map(_running, pids))
        terminate_pools()
        assert not [p for p in pids if _running(p)] and forkserver._forkserver._forkserver_pid is None   # reaped and forgotten
    new = worker_pool(2).submit(_worker_ready).result()
    assert new not in pids and _running(new)
