"""Zoos on a real Dask cluster and at URLs: the same records as a local run, a worker killed mid-run, two runs on one zoo."""
import json, os, shutil, signal, socket, subprocess, sys, threading, time
from pathlib import Path
import pytest
import yaml
import zarr
from interpgen.sampler import InterpgenError
from interpgen.pipeline import DatasetGenerationPipeline
from interpgen.store import open_zoo, zoo_state
from interpgen.distributed import local_cluster
from zoo_helpers import env, cli, same_store, tiny_config

distributed = pytest.importorskip('distributed')
CFG = tiny_config(40, 5, max_epochs=8)   # 5 shards of 8 records


@pytest.fixture(scope='module')
def ref(tmp_path_factory):
    "The local, in-process run every other run must equal."
    return DatasetGenerationPipeline(CFG).run(tmp_path_factory.mktemp('ref') / 'zoo.zarr', progress=False).path


@pytest.fixture(scope='module')
def cfg_file(tmp_path_factory):
    p = tmp_path_factory.mktemp('cfg') / 'cfg.yaml'; p.write_text(yaml.safe_dump(CFG)); return p


@pytest.fixture(scope='module')
def client():
    "A real cluster: 2 worker processes of 1 thread, started without Dask's MALLOC_TRIM_THRESHOLD_."
    with local_cluster(n_workers=2, threads_per_worker=1) as cluster, distributed.Client(cluster) as c:
        c.wait_for_workers(2)
        yield c


def test_dask_run_equals_local_run(ref, client, tmp_path):
    out = tmp_path / 'zoo.zarr'
    zoo = DatasetGenerationPipeline(CFG).run(f'file://{out}', scheduler=client, progress=False)
    same_store(ref, out)
    pids = {str(p) for p in client.run(os.getpid).values()}
    assert {s['worker'].split(':')[1] for s in zoo.shard_stats()} <= pids      # every shard was written by a worker process
    assert not Path(f'{out}.lock').exists()                                      # the run lock is released
    assert set(client.run(lambda: os.environ.get('MALLOC_TRIM_THRESHOLD_')).values()) == {None}
    with pytest.raises(InterpgenError, match='1 when a Dask scheduler'):
        DatasetGenerationPipeline(CFG).run(out, workers=2, scheduler=client, progress=False)


def test_cli_scheduler_address(ref, client, cfg_file, tmp_path):
    out = tmp_path / 'zoo.zarr'
    r = cli('interpgen_generate', '--config', cfg_file, '--out', out, '--scheduler', client.scheduler.address, '--quiet')
    assert '40 records' in r.stdout
    same_store(ref, out)
    r = cli('interpgen_generate', '--config', cfg_file, '--out', out, '--scheduler', 'tcp://127.0.0.1:9', check=False)
    assert r.returncode == 0 and '40 records' in r.stdout          # nothing left to do: the scheduler is not even contacted


def test_killed_worker_is_replaced_and_the_zoo_equals_the_local_run(ref, client, tmp_path):
    out = tmp_path / 'zoo.zarr'
    pipe = DatasetGenerationPipeline(CFG)
    res = {}
    def run():
        try: res['zoo'] = pipe.run(out, scheduler=client, progress=False)
        except BaseException as e: res['error'] = e
    t = threading.Thread(target=run)
    t.start()
    pids = client.run(os.getpid)                                   # worker address -> pid
    shard_of = lambda key: int(key.split('-')[2])                  # keys are interpgen-shard-{shard}-{run}
    def done():
        try: return {i for i, s in enumerate(zarr.open_group(out, mode='r')['shards'][:].tolist()) if s}
        except Exception: return set()
    victim, lost, t0 = None, set(), time.time()
    while t.is_alive() and time.time() - t0 < 300:               # once the first shard lands, kill a worker with an unfinished shard in hand
        d = done()
        if d:
            in_hand = {w: {shard_of(k) for k in ks} - d for w, ks in client.processing().items()}
            victim = next((w for w, s in in_hand.items() if s), None)
            if victim:
                os.kill(pids[victim], signal.SIGKILL)
                lost = in_hand[victim] - done()                    # what it had not finished when it died
                break
        time.sleep(0.01)
    t.join()
    assert victim is not None, 'the run ended before a worker could be killed'
    assert 'error' not in res, res.get('error')
    zoo = res['zoo']
    same_store(ref, out)                                           # every record once, in its place, as in the local run
    for s in lost: assert zoo.shard_stats()[s]['worker'] != f'{socket.gethostname()}:{pids[victim]}'   # written again elsewhere
    client.wait_for_workers(2)                                     # the nanny started a new worker in its place
    assert pids[victim] not in client.run(os.getpid).values()


def test_a_second_run_on_the_same_zoo_is_refused(ref, cfg_file, tmp_path):
    out = tmp_path / 'zoo.zarr'
    a = subprocess.Popen([shutil.which('interpgen_generate'), '--config', str(cfg_file), '--out', str(out), '--quiet'],
                         env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (zoo_state(out) == 'zoo' and Path(f'{out}.lock').exists()) and a.poll() is None and time.time() - t0 < 120: time.sleep(0.01)
    assert a.poll() is None, a.communicate()
    # this process is the second run: refused, naming the first; with --overwrite and another config too
    for pipe, kw in [(DatasetGenerationPipeline(CFG), {}), (DatasetGenerationPipeline(CFG, seed=6), dict(overwrite=True))]:
        with pytest.raises(InterpgenError) as e: pipe.run(out, progress=False, **kw)
        assert f'pid {a.pid} on host {socket.gethostname()}' in str(e.value) and 'interpgen_generate' in str(e.value)
    so, se = a.communicate(timeout=300)
    assert a.returncode == 0, se
    same_store(ref, out)                                           # the first run was not disturbed
    assert not Path(f'{out}.lock').exists()


def test_locks_from_elsewhere(ref, cfg_file, tmp_path):
    out = tmp_path / 'zoo.zarr'; shutil.copytree(ref, out)
    lock = Path(f'{out}.lock')
    # a live run on another host: the command refuses, exit status 2, one line naming it and what to do
    lock.write_text(json.dumps(dict(run='x', host='node17', pid=4242, started='2026-01-01T00:00:00+00:00', command='interpgen_generate',
                                    expires=time.time() + 60)))
    r = cli('interpgen_generate', '--config', cfg_file, '--out', out, check=False)
    assert r.returncode == 2 and 'pid 4242 on host node17' in r.stderr and f'delete {lock}' in r.stderr and 'Traceback' not in r.stderr
    # its lease ran out: taken over; a process of this host that no longer exists: taken over at once
    lock.write_text(json.dumps(dict(run='x', host='node17', pid=4242, expires=time.time() - 1)))
    assert len(DatasetGenerationPipeline(CFG).run(out, progress=False).done_shards()) == 5
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True).stdout.strip()
    lock.write_text(json.dumps(dict(run='x', host=socket.gethostname(), pid=int(dead), expires=time.time() + 60)))
    DatasetGenerationPipeline(CFG).run(out, progress=False)
    assert not lock.exists()
    same_store(ref, out)


def test_memory_url_store(ref, client):
    url = 'memory://tests/zoo.zarr'
    zoo = DatasetGenerationPipeline(CFG).run(url, progress=False)
    assert zoo.path == url and zoo.hashes() == open_zoo(ref).hashes() and zoo.info()['written'] == 40
    assert [r.hash for r in open_zoo(url)[8:12]] == [r.hash for r in open_zoo(ref)[8:12]]
    # the workers are other processes: they cannot see this process's memory, and say so
    with pytest.raises(InterpgenError, match='cannot see the zoo at memory://tests/other.zarr'):
        DatasetGenerationPipeline(CFG).run('memory://tests/other.zarr', scheduler=client, progress=False)
    with pytest.raises(InterpgenError, match='needs|pip install|is not allowed'):
        DatasetGenerationPipeline(CFG).run('nosuchprotocol://bucket/zoo.zarr', progress=False)


def test_a_task_whose_run_is_gone_writes_nothing(client, tmp_path):
    "A killed client's tasks run on in the cluster; each checks its run's lease before writing, and writes nothing once the run is gone."
    from interpgen.distributed import _dask_shard_task
    from interpgen.store import RunLock
    out = tmp_path / 'zoo.zarr'; pipe = DatasetGenerationPipeline(CFG)
    _, sd, _ = pipe.prepare(out)
    lock = RunLock(out).acquire()
    task = lambda shard: client.submit(_dask_shard_task, pipe.config.to_dict(), shard, str(out), sd.content(), lock.token, pure=False).result()
    assert 'error' not in task(0)                                    # the run holds its lock: its task writes
    lock.release()
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True).stdout.strip()
    Path(f'{out}.lock').write_text(json.dumps(dict(run=lock.token, host=socket.gethostname(), pid=int(dead), expires=time.time() + 60)))
    assert 'no longer holds the lock' in task(1)['error']            # as a SIGKILLed client leaves it: its lock, its process gone
    Path(f'{out}.lock').unlink()
    assert 'no longer holds the lock' in task(2)['error']            # no lock at all
    assert open_zoo(out).done_shards() == [0] and open_zoo(out).shard_stats()[1:3] == [None, None]
