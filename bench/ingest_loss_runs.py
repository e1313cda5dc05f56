"""The run of tests/test_faults.py's 10,000-line manifest, repeated: each run's
`ingest/duplicate` count from the manifest against the 8,946 expected.

    .venv/bin/python bench/ingest_loss_runs.py RUNS WORKERS [LINES FILES]

WORKERS: --direct_num_workers of the multi-threaded local runner, or `mem` for in_memory.
(bench/README.md, "Rows lost by the multi-threaded local runner".)"""
import json, os, sys, time, wave, shutil, tempfile
import numpy as np
from mmcurate.pipelines import curate
from mmcurate.pipelines.config import CurateConfig, OutputConfig

SR = 16000
MEDIA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "media")
def jfk():
    with wave.open(f"{MEDIA}/speech/jfk.wav") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
def wav(path, s):
    with wave.open(path, "wb") as w:
        w.setnchannels(1); w.setsampwidth(2); w.setframerate(SR); w.writeframes(s.astype("<i2").tobytes())
    return path

def make(d, n_lines, n_files):
    os.makedirs(d, exist_ok=True)
    j = jfk()
    files = [wav(f"{d}/f{i:02d}.wav", j[i * 1600:i * 1600 + SR]) for i in range(n_files)]
    lines = []
    named = set()
    for i in range(n_lines):
        if i % 10 == 9:
            lines.append(json.dumps({"uri": f"missing/{i}.wav"}))
        else:
            named.add(files[i % n_files]); lines.append(json.dumps({"uri": os.path.basename(files[i % n_files]), "title": f"line {i}"}))
    with open(f"{d}/big.jsonl", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return f"{d}/big.jsonl", len(named), n_lines - n_lines // 10

if __name__ == "__main__":
    runs = int(sys.argv[1]); workers = sys.argv[2]; n_lines = int(sys.argv[3]) if len(sys.argv) > 3 else 10000; n_files = int(sys.argv[4]) if len(sys.argv) > 4 else 54
    ckpt = os.environ.get("CKPT", "1") == "1"
    base = tempfile.mkdtemp(prefix="loss-")
    manifest, named, good = make(base + "/m", n_lines, n_files)
    want = good - named
    args = ["--direct_running_mode=in_memory"] if workers == "mem" else [
        "--direct_running_mode=multi_threading", f"--direct_num_workers={workers}"]
    bad = 0
    for r in range(runs):
        out = f"{base}/out{r}"
        t = time.time()
        m = curate.run([manifest], out, CurateConfig(stages=("vad",), output=OutputConfig(checkpoints=ckpt)), beam_args=args)
        got = m["rejected"].get("ingest/duplicate", 0)
        bad += got != want
        print(f"run {r}: duplicate {got} of {want} ({'LOST ' + str(want - got) if got != want else 'ok'}) {time.time()-t:.1f}s", flush=True)
        shutil.rmtree(out)
    print(f"lost in {bad} of {runs} runs (workers={workers}, lines={n_lines}, files={n_files}, ckpt={ckpt})")
