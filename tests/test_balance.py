"""Cost-balanced shares for the local multi-worker DirectRunner (mmcurate.pipelines.balance)."""

from __future__ import annotations

from dataclasses import dataclass

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from mmcurate.pipelines.balance import Spread, SpreadByCost, assign_buckets, estimated_cost_s, local_workers


@dataclass(frozen=True)
class Ref:  # the fields of a MediaRef that balancing reads
    source_id: str
    uri: str
    media_uri: str
    bytes: int


# seconds of the shared media's sources with speech (laion_talk, autoeditor, 4 x 30 s, 3 x jfk, LDC93S1)
COSTS = {"talk": 122.7, "auto": 42.4, "dev00": 30.0, "dev01": 30.0, "trn07": 30.0, "sample": 30.0,
         "jfk1": 11.0, "jfk2": 11.0, "jfk3": 11.0, "ldc": 2.9}


def _refs():
    return [Ref(k, f"/m/{k}", f"/m/{k}", int(v * 1000)) for k, v in COSTS.items()]


def _loads(pairs, n):
    loads = [0.0] * n
    for b, r in pairs:
        loads[b] += COSTS[r.source_id]
    return loads


def test_longest_first_gives_near_equal_shares_whatever_the_order():
    refs = _refs()
    a = assign_buckets(refs, 2, lambda r: COSTS[r.source_id], key=lambda r: r.source_id)
    b = assign_buckets(list(reversed(refs)), 2, lambda r: COSTS[r.source_id], key=lambda r: r.source_id)
    assert sorted((k, r.source_id) for k, r in a) == sorted((k, r.source_id) for k, r in b)
    loads = _loads(a, 2)
    assert max(loads) <= 1.03 * sum(loads) / 2, loads  # 163.7 / 157.3: the talk's share has the jfks
    # dealing the same sources round-robin by id, as a shuffle with random keys can, is far off
    robin = _loads([(i % 2, r) for i, r in enumerate(sorted(refs, key=lambda r: r.source_id))], 2)
    assert max(robin) - min(robin) > 60, robin


def test_local_workers_reads_the_direct_runner_options():
    assert local_workers(PipelineOptions([])) == 1
    assert local_workers(PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])) == 2
    assert local_workers(PipelineOptions(["--direct_running_mode=multi_threading", "--direct_num_workers=3"])) == 3
    assert local_workers(PipelineOptions(["--direct_num_workers=2"])) == 1  # in_memory: one worker
    assert local_workers(PipelineOptions(["--runner=DataflowRunner", "--direct_num_workers=2"])) == 0



def test_the_spread_deals_by_cost_only_on_several_local_workers():
    """What the pipeline layer hands the stages: SpreadByCost over N > 1 local workers, None
    (the stage's runner-neutral default) for one worker or a runner that rebalances itself."""
    assert isinstance(Spread(2)(cost=len), SpreadByCost) and Spread(2)(cost=len).workers == 2
    assert Spread(1)(cost=len) is None and Spread(0)(cost=len) is None


def test_no_stage_reads_runner_options_or_internals():
    """Stages know nothing of the runner: no module under transforms/ reads pipeline options
    or a runner's internals, or hides modules through sys.modules."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "transforms"
    banned = re.compile(r"\._options\b|FnApiRunner|PipelineOptions|DirectOptions|sys\.modules\[|"
                        r"sys\.modules\.(pop|setdefault|update)|runner_api|\.view_as\(")
    hits = [f"{f.name}:{n}: {line.strip()}" for f in sorted(root.rglob("*.py"))
            for n, line in enumerate(f.read_text().splitlines(), 1) if banned.search(line)]
    assert hits == []


def test_cost_is_the_container_duration_or_the_byte_size(tmp_path):
    from tests.conftest import MEDIA

    jfk = MEDIA / "speech" / "jfk.wav"
    assert estimated_cost_s(Ref("j", str(jfk), str(jfk), 1)) == pytest.approx(11.0, abs=0.1)
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"not media" * 100)
    assert estimated_cost_s(Ref("x", str(junk), str(junk), 64000)) == 2.0


class _BundleContents(beam.DoFn):
    """Emits, per bundle, the sorted ids it saw: what one worker of the local runner ran."""

    def start_bundle(self):
        self.ids = []

    def process(self, ref):
        self.ids.append(ref.source_id)

    def finish_bundle(self):
        if self.ids:
            yield WindowedValue(tuple(sorted(self.ids)), MIN_TIMESTAMP, [GlobalWindow()])


def test_each_local_worker_runs_one_balanced_share():
    refs = _refs()
    cost = lambda r: COSTS[r.source_id]  # noqa: E731
    expected = {}
    for b, r in assign_buckets(refs, 2, cost, key=lambda r: (r.source_id, r.uri)):
        expected.setdefault(b, []).append(r.source_id)
    options = PipelineOptions(["--direct_running_mode=multi_threading", "--direct_num_workers=2"])
    from mmcurate.pipelines.curate import local_runner

    with beam.Pipeline(runner=local_runner(options), options=options) as p:
        shares = (p | beam.Create(refs) | SpreadByCost(2, cost) | beam.ParDo(_BundleContents()))
        assert_that(shares, equal_to([tuple(sorted(v)) for v in expected.values()]))


def test_sources_are_spread_by_fingerprinting_cost_before_dedup_fingerprints_them():
    """Dedup's audio and video fingerprints (decoded in the merge) go to the local runner's
    workers in cost-balanced shares: seconds of audio, a video's 4x again for video_fp. Dealt
    round-robin by key, one worker of two got the 2-minute talk and more."""
    import functools

    from mmcurate.transforms.dedup_signatures import fingerprint_cost

    def _spread_fingerprints(joined, methods, workers=2):
        spread = Spread(workers)(cost=functools.partial(fingerprint_cost, frozenset(methods)),
                                 key=lambda kv: kv[0])
        return joined if spread is None else joined | spread

    def joined(sid, kind, seconds):
        info = (sid, f"/m/{sid}", f"/m/{sid}", kind, "0" * 64, seconds, 16000.0, 1000)
        return sid, {"info": [info], "prior": []}

    items = [joined("talk", "video", 122.7), joined("auto", "video", 42.4), joined("chair", "video", 22.5),
             *(joined(f"meet{i}", "audio", 30.0) for i in range(4)), joined("jfk", "audio", 11.0),
             ("gone", {"info": [], "prior": []})]
    both = frozenset({"audio_fp", "video_fp"})
    assert fingerprint_cost(both, items[0]) == pytest.approx(5 * 122.7)
    assert fingerprint_cost(frozenset({"audio_fp"}), items[0]) == pytest.approx(122.7)
    assert fingerprint_cost(frozenset({"video_fp"}), items[3]) == 0.0  # audio: no video_fp
    assert fingerprint_cost(both, items[-1]) == 0.0
    cost = functools.partial(fingerprint_cost, both)
    expected: dict = {}
    for b, kv in assign_buckets(items, 2, cost, key=lambda kv: kv[0]):
        expected.setdefault(b, []).append(kv[0])
    loads = sorted(sum(cost(kv) for kv in items if kv[0] in ids) for ids in expected.values())
    assert loads == pytest.approx([455.5, 613.5])  # the talk alone against all the others
    from mmcurate.pipelines.curate import local_runner

    options = PipelineOptions(["--direct_running_mode=multi_threading", "--direct_num_workers=2"])
    with beam.Pipeline(runner=local_runner(options), options=options) as p:
        shares = (_spread_fingerprints(p | beam.Create(items), {"sha256", "audio_fp", "video_fp"})
                  | beam.Map(lambda kv: Ref(kv[0], "", "", 0)) | beam.ParDo(_BundleContents()))
        assert_that(shares, equal_to([tuple(sorted(v)) for v in expected.values()]))
    one = beam.Pipeline(options=PipelineOptions([]))
    plain = one | beam.Create(items)
    assert _spread_fingerprints(plain, {"audio_fp"}, workers=1) is plain


# --------------------------------------------------------------------------- local parallelism


def _par(args, cores, sources=None, **sets):
    from mmcurate.pipelines.config import CurateConfig
    from mmcurate.pipelines.curate import local_parallelism

    data: dict = {}
    for key, value in sets.items():
        section, name = key.split("__")
        data.setdefault(section, {})[name] = value
    cfg, out_args, par = local_parallelism(CurateConfig.from_dict(data), args, cores=cores, sources=sources)
    return (out_args, par.mode, par.workers,
            (cfg.asr.num_workers, cfg.asr.cpu_threads, cfg.diarization.torch_threads,
             cfg.quality.dnsmos_threads, cfg.dedup.semantic_threads))


def test_the_local_runner_takes_one_worker_thread_per_core_when_no_flag_says_otherwise():
    threads2 = ["--direct_running_mode=multi_threading", "--direct_num_workers=2"]
    # 2 cores: 2 worker threads, a CTranslate2 replica each, 1 model thread each
    assert _par([], 2) == (threads2, "multi_threading", 2, (2, 1, 1, 1, 1))
    # many cores: at most AUTO_MAX_WORKERS threads, the cores shared among their models
    assert _par([], 16)[1:] == ("multi_threading", 4, (4, 4, 4, 4, 4))
    # one core: one in-process worker, library defaults, as before
    assert _par([], 1) == ([], "in_memory", 1, (1, 0, 0, 0, 0))
    # no more workers than sources: one source runs in-process on all the model threads
    assert _par([], 2, sources=1) == ([], "in_memory", 1, (1, 0, 0, 0, 0))
    assert _par([], 16, sources=3)[1:] == ("multi_threading", 3, (3, 5, 5, 5, 5))
    assert _par([], 2, sources=32)[1:] == ("multi_threading", 2, (2, 1, 1, 1, 1))


def test_given_flags_and_settings_are_kept():
    assert _par(["--direct_running_mode=in_memory"], 2) == (
        ["--direct_running_mode=in_memory"], "in_memory", 1, (1, 0, 0, 0, 0))
    assert _par(["--direct_num_workers=1"], 8)[1:] == ("in_memory", 1, (1, 0, 0, 0, 0))
    # worker processes: each loads its own model (one replica), cores / workers threads each
    procs = ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]
    assert _par(procs, 8) == (procs, "multi_processing", 2, (1, 4, 4, 4, 4))
    # a setting other than 0 wins over the automatic one
    assert _par([], 2, asr__cpu_threads=2, asr__num_workers=1, diarization__torch_threads=3,
                quality__dnsmos_threads=2, dedup__semantic_threads=4)[3] == (1, 2, 3, 2, 4)
    # another runner: its own workers; one replica, library default threads
    assert _par(["--runner=DataflowRunner"], 2) == (["--runner=DataflowRunner"], "", 1, (1, 0, 0, 0, 0))


def test_the_run_log_names_the_threads_the_models_get():
    from mmcurate.pipelines.config import CurateConfig
    from mmcurate.pipelines.curate import local_parallelism

    def said(args, **sections):
        return local_parallelism(CurateConfig.from_dict(sections), args, cores=2, sources=13)[2].describe()

    assert said([]) == "multi_threading, 2 worker(s), 1 model thread(s) each"
    one = ["--direct_running_mode=multi_processing", "--direct_num_workers=1"]
    assert said(one) == "multi_processing, 1 worker(s), library default threads"
    # settings given win, and the line says what they are (it said "library default threads")
    assert said(one, asr={"cpu_threads": 1}, diarization={"torch_threads": 1}, quality={"dnsmos_threads": 1},
                dedup={"semantic_threads": 1}) == "multi_processing, 1 worker(s), 1 model thread(s) each"
    assert said(one, asr={"cpu_threads": 2}) == (
        "multi_processing, 1 worker(s), model threads: ASR 2, diarization library default, DNSMOS library default, "
        "embeddings library default")
