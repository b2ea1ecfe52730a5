"""`etp-search serve` under load: 1, 4 and 16 concurrent loopback clients vs the in-process Searcher.

Each level runs for a bounded time with a deterministic mix of text, stored-record and upload
(WFDB pair) queries against a real `etp-search serve` subprocess; the same mix is timed in process
through ``Searcher`` (one torch thread, like the server) in the same run, as the baseline. Then the
same levels run again while `etp-search index` appends to the served store. Finally a headless
Chromium saves screenshots of the page (search results, a record's plot, an upload search).

    python benchmarks/bench_serve.py --seconds 10
    -> benchmarks/results/serve.{json,md}, serve_search.png, serve_record.png, serve_upload.png

Targets (issue 12): HTTP adds <= 3 ms to a single client's median; at 16 clients p99 < 10x the
single-client median; zero errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._paths import ROOT, portable  # noqa: E402
from etp_search.serve.client import multipart_body  # noqa: E402
from tests.serve_browser import browser_missing, chromium, close_chromium, start_server, stop_server  # noqa: E402

EXAMPLE = ROOT / "etp_search" / "examples" / "ptbxl"
SHARED = ROOT.parent / "shared" / "data" / "ptbxl"
TEXTS = ["atrial fibrillation", "sinus rhythm", "left bundle branch block", "anterior myocardial infarction",
         "ST depression", "left ventricular hypertrophy", "sinus bradycardia", "normal ECG",
         "ventricular premature complex", "first degree AV block"]
MIX = ("text", "text", "record", "text", "upload", "record", "text", "record", "upload", "text")
K = 10
logger = logging.getLogger("bench_serve")


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, q)) if xs else float("nan")


class Queries:
    """The deterministic query mix: query i is MIX[i % 10] with the i-th text / id / upload."""

    def __init__(self, ids: list[str], uploads: list[tuple[Path, Path]]):
        self.ids, self.uploads = ids, uploads
        # Multipart bodies built once, as the package's client builds them (one write, like a browser).
        self.blobs = [multipart_body([("file", (h.name, h.read_bytes())), ("file", (d.name, d.read_bytes()))],
                                     {"k": str(K)}) for h, d in uploads]

    def http(self, client, i: int) -> str:
        kind = MIX[i % len(MIX)]
        if kind == "text":
            r = client.post("/api/v1/search/text", json={"text": TEXTS[i % len(TEXTS)], "k": K})
        elif kind == "record":
            r = client.post("/api/v1/search/record", json={"id": self.ids[(i * 7) % len(self.ids)], "k": K})
        else:
            body, content_type = self.blobs[i % len(self.blobs)]
            r = client.post("/api/v1/search/upload", content=body, headers={"content-type": content_type})
        if r.status_code != 200 or len(r.json()["hits"]) != K:
            raise RuntimeError(f"{kind}: HTTP {r.status_code} {r.text[:200]}")
        return kind, r.json()["rows"]

    def local(self, searcher, i: int) -> str:
        kind = MIX[i % len(MIX)]
        if kind == "text":
            hits = searcher.query_text(TEXTS[i % len(TEXTS)], k=K)
        elif kind == "record":
            hits = searcher.query_record(self.ids[(i * 7) % len(self.ids)], k=K)
        else:
            hits = searcher.query_file(self.uploads[i % len(self.uploads)][0], k=K)
        assert len(hits) == K
        return kind


def summarise(samples: list[tuple[str, float]], errors: int, seconds: float) -> dict:
    lat = [s for _, s in samples]
    out = {"requests": len(samples), "errors": errors, "seconds": round(seconds, 2),
           "rps": round(len(samples) / seconds, 1) if seconds else 0.0,
           "p50_ms": round(_pct(lat, 50), 2), "p99_ms": round(_pct(lat, 99), 2), "by_kind": {}}
    for kind in sorted(set(MIX)):
        xs = [s for k, s in samples if k == kind]
        out["by_kind"][kind] = {"n": len(xs), "p50_ms": round(_pct(xs, 50), 2), "p99_ms": round(_pct(xs, 99), 2)}
    return out


def paired(store: Path, url: str, queries: Queries, blocks: int) -> tuple[dict, dict, dict]:
    """The same queries in process (``Searcher``, one torch thread like the server) and over HTTP, in
    alternating blocks of one query mix each: both sides see the same background load. Single queries
    alternated instead would make the two model copies evict each other's caches at every step, so
    each block starts with two untimed warm-up queries."""
    import httpx
    import torch

    from etp_search.search import Searcher

    torch.set_num_threads(1)
    local: list[tuple[str, float]] = []
    http: list[tuple[str, float]] = []
    # cache_columns: the in-process side holds hit columns and vectors in memory as the server does,
    # so the difference is what HTTP and the server's queueing add, not HDF5 reads one side skips.
    with Searcher.open(store, cache_columns=True) as s, httpx.Client(base_url=url, timeout=60) as c:
        sides = ((local, lambda i: queries.local(s, i)), (http, lambda i: queries.http(c, i)[0]))
        for b in range(blocks):
            for out, run in sides:
                for w in range(2):
                    run(b * len(MIX) + w)
                for i in range(b * len(MIX), (b + 1) * len(MIX)):
                    t0 = time.perf_counter()
                    kind = run(i)
                    out.append((kind, time.perf_counter() - t0))
    res = []
    for samples in (local, http):
        out = summarise(samples, 0, sum(t for _, t in samples))
        out["load_avg_1min"] = round(os.getloadavg()[0], 2)
        res.append(out)
    by_kind = {k: round(res[1]["by_kind"][k]["p50_ms"] - res[0]["by_kind"][k]["p50_ms"], 2) for k in sorted(set(MIX))}
    return res[0], res[1], {"median_diff_ms": round(res[1]["p50_ms"] - res[0]["p50_ms"], 2),
                            "median_diff_by_kind_ms": by_kind, "pairs": blocks * len(MIX)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def encode_costs(store: Path, texts: list[str], repeats: int = 15) -> dict:
    """Median ms of one text-tower forward of 1, 4 and 16 texts and one ECG-tower forward of 1, 4 and
    16 ECGs, in process on one torch thread: what batching concurrent requests saves."""
    import torch

    from etp_search.search import Searcher

    torch.set_num_threads(1)
    out: dict[str, dict[str, float]] = {"text": {}, "ecg": {}}
    with Searcher.open(store) as s, torch.inference_mode():
        model = s.model
        x = torch.zeros(16, *_input_shape(model, s))
        for n in (1, 4, 16):
            batch = (texts * 16)[:n]
            for kind, fn in (("text", lambda: model.encode_text(batch)), ("ecg", lambda: model.encode_ecg(x[:n]))):
                fn()
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t0)
                out[kind][str(n)] = round(float(np.median(times)) * 1e3, 2)
    out["load_avg_1min"] = round(os.getloadavg()[0], 2)
    return out


def _input_shape(model, searcher) -> tuple[int, int]:
    """(leads, samples) the ECG tower takes for this store's preset."""
    from etp_search.preprocess import get_preset

    return 12, get_preset(model.cfg.preset).length


def load(url: str, queries: Queries, clients: int, seconds: float, server_pid: int | None = None,
         until: threading.Event | None = None) -> dict:
    """``clients`` threads, each with its own keep-alive connection, querying until the deadline
    (or until ``until`` is set, if sooner);
    with ``server_pid``, also the CPU time per request of the server and of this (client) process,
    and the compute thread's batch sizes over the level (from /info)."""
    import httpx

    samples: list[tuple[str, float]] = []
    rows: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    deadline = [0.0]

    def worker(w: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            queries.http(c, w)  # warm the connection
            start.wait()
            i = w
            while time.perf_counter() < deadline[0] and not (until is not None and until.is_set()):
                t0 = time.perf_counter()
                try:
                    kind, n_rows = queries.http(c, i)
                except Exception as exc:  # counted, and the run goes on
                    with lock:
                        errors.append(str(exc)[:200])
                else:
                    with lock:
                        samples.append((kind, time.perf_counter() - t0))
                        rows.append(n_rows)
                i += clients

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    batching0 = httpx.get(url + "/api/v1/info").json()["batching"]
    cpu0 = (cpu_seconds(server_pid), cpu_seconds(os.getpid())) if server_pid else None
    deadline[0] = time.perf_counter() + seconds
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    out = summarise(samples, len(errors), time.perf_counter() - t0)
    out.update(clients=clients, rows_seen=sorted(set(rows)), load_avg_1min=round(os.getloadavg()[0], 2))
    if cpu0 is not None and samples:
        n = len(samples) + len(errors)
        out["server_cpu_ms_per_request"] = round((cpu_seconds(server_pid) - cpu0[0]) / n * 1e3, 2)
        out["client_cpu_ms_per_request"] = round((cpu_seconds(os.getpid()) - cpu0[1]) / n * 1e3, 2)
    b1 = httpx.get(url + "/api/v1/info").json()["batching"]
    nb = b1["batches"] - batching0["batches"]
    out["mean_batch"] = round((b1["queries"] - batching0["queries"]) / nb, 2) if nb else 0.0
    if errors:
        out["error_examples"] = sorted(set(errors))[:5]
    return out


def copy_records(src: Path, dst: Path, stems: list[tuple[str, str]]) -> None:
    for sub, stem in stems:
        (dst / "records100" / sub).mkdir(parents=True, exist_ok=True)
        for ext in (".hea", ".dat"):
            shutil.copy(src / "records100" / sub / f"{stem}{ext}", dst / "records100" / sub / f"{stem}{ext}")


def record_files(data: Path) -> list[tuple[str, str]]:
    return sorted((p.parent.name, p.stem) for p in (data / "records100").glob("*/*.hea"))


def screenshots(store: Path, out: Path, upload: tuple[Path, Path]) -> list[str]:
    """Three screenshots of the page in a real headless Chromium, saved beside the results."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    proc, url = start_server(store)
    driver, profile = chromium()
    saved = []
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(url + "/")
        wait.until(lambda d: "ECGs" in d.find_element(By.ID, "status").text)
        driver.find_element(By.ID, "q").send_keys("atrial fibrillation", Keys.ENTER)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results canvas.thumb[data-drawn='1']")) >= 6)
        driver.save_screenshot(str(out / "serve_search.png"))
        driver.find_element(By.CSS_SELECTOR, "#results .card button.open").click()
        wait.until(lambda d: d.find_element(By.ID, "rec-plot").get_attribute("data-loaded") == "1")
        driver.save_screenshot(str(out / "serve_record.png"))
        driver.execute_script("document.getElementById('record').close()")
        driver.find_element(By.ID, "file").send_keys(f"{upload[0]}\n{upload[1]}")
        wait.until(lambda d: upload[0].stem in d.find_element(By.ID, "query-title").text)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results canvas.thumb[data-drawn='1']")) >= 6)
        driver.save_screenshot(str(out / "serve_upload.png"))
        saved = ["serve_search.png", "serve_record.png", "serve_upload.png"]
    finally:
        close_chromium(driver, profile)
        stop_server(proc)
    return saved


def ablation(store: Path, queries: Queries, levels: list[int], args: argparse.Namespace, *server_args: str) -> list[dict]:
    """The given client levels against a fresh server started with ``server_args`` (none with --no-ablation)."""
    if args.no_ablation or not levels:
        return []
    out = []
    proc, url = start_server(store, *server_args)
    try:
        for n in levels:
            out.append(load(url, queries, n, args.seconds, proc.pid))
            logger.info("%d clients, server %s: %s", n, " ".join(server_args) or "defaults",
                        {k: v for k, v in out[-1].items() if k != "by_kind"})
    finally:
        stop_server(proc)
    return out


def _p99_ratio(cached: list[dict]) -> dict:
    """16-client p99 over the single-client median, both on the same (ablation) server."""
    one = next((r for r in cached if r["clients"] == 1), None)
    many = next((r for r in cached if r["clients"] == 16), None)
    if one is None or many is None:
        return {}
    return {"p50_1": one["p50_ms"], "p99_16": many["p99_ms"], "ratio": round(many["p99_ms"] / one["p50_ms"], 2),
            "rps_16": many["rps"]}


def markdown(res: dict) -> str:
    base, hp, t = res["in_process"], res["http_paired"], res["targets"]
    lines = ["# `etp-search serve` under load", "",
             f"{res['machine']}; store: {res['rows']} PTB-XL records ({res['index']}); server: `etp-search serve` "
             f"(two compute threads, one for texts and stored records and one for uploads, each batch the encodings and "
             f"FAISS searches of concurrent requests, up to {res['max_batch']} at once, on 1 torch + 1 FAISS thread each; {res['server_workers']} pool threads parse "
             "uploads; `--text-cache 0` unless a line says otherwise, so every text query runs the text tower, as in "
             "process); clients: Python threads with keep-alive httpx connections on the same machine; query mix "
             f"per 10 requests: 5 text, 3 stored record, 2 WFDB upload; k={K}; {res['seconds']} s per level; load avg "
             "= the machine's 1-minute load average after the level (other sessions share these cores); CPU ms/req "
             "= CPU time the server (and the client process) used over the level / requests; batch = mean queries "
             "per compute-thread batch.", "",
             "| | clients | requests/s | p50 ms | p99 ms | errors | text p50 | record p50 | upload p50 | server CPU ms/req "
             "| client CPU ms/req | batch | load avg |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| in-process `Searcher` (baseline), paired | 1 | {base['rps']} | {base['p50_ms']} | {base['p99_ms']} | 0 | "
             f"{base['by_kind']['text']['p50_ms']} | {base['by_kind']['record']['p50_ms']} | {base['by_kind']['upload']['p50_ms']} "
             f"| | | | {base['load_avg_1min']} |",
             f"| HTTP, paired with the line above | 1 | {hp['rps']} | {hp['p50_ms']} | {hp['p99_ms']} | 0 | "
             f"{hp['by_kind']['text']['p50_ms']} | {hp['by_kind']['record']['p50_ms']} | {hp['by_kind']['upload']['p50_ms']} "
             f"| | | | {hp['load_avg_1min']} |"]
    for phase, title in (("idle", "HTTP"), ("unbatched", "HTTP, `--max-batch 1` (each search alone on its compute thread), same run"),
                         ("one_lane", "HTTP, `--lanes 1` (uploads' ECG forward on the same compute thread as texts), same run"),
                         ("cached", "HTTP, text vectors remembered (the default `--text-cache 1024`; the mix's texts repeat)"),
                         ("appending", "HTTP while `index` appends")):
        for r in res.get(phase, []):
            bk = r["by_kind"]
            lines.append(f"| {title} | {r['clients']} | {r['rps']} | {r['p50_ms']} | {r['p99_ms']} | {r['errors']} | "
                         f"{bk['text']['p50_ms']} | {bk['record']['p50_ms']} | {bk['upload']['p50_ms']} | "
                         f"{r.get('server_cpu_ms_per_request', '')} | {r.get('client_cpu_ms_per_request', '')} | "
                         f"{r.get('mean_batch', '')} | {r['load_avg_1min']} |")
    a = res["append"]
    per_run = "; ".join(f"{r['clients']} clients: {r['rows_before']} -> {r['rows_after']} rows in {r['index_seconds']} s "
                        f"(model load included), load for {r['level_seconds']} s of it" for r in a["runs"])
    lines += ["", f"While appending: one `etp-search index --batch-size 16 --append-every 16` run per level (each batch "
              "is appended as soon as it is embedded) over a new share of the records, "
              f"{a['rows_added']} rows in all ({a['rows_before']} -> {a['rows_after']}); each level starts when its "
              f"run's first batch lands and stops when the run ends (or after {res['seconds']} s): {per_run}. "
              f"Responses saw {a['distinct_rows_seen']} different row counts, "
              f"{a['rows_seen_min']} .. {a['rows_seen_max']}, each a whole number of batches, with no restart. Both "
              "compete for the same 2 cores, so latency rises while it runs.", "",
              "Targets:", "",
              f"- HTTP adds to a single client's median ({res['overhead_pairs']['pairs']} queries each way, in alternating "
              "blocks of one mix in process and the same mix over HTTP, so both see the same background load): "
              + ", ".join(f"{k} {v:+.2f} ms" for k, v in t['overhead_by_kind'].items())
              + f" (whole mix {t['mix_overhead_ms']:+.2f} ms); target <= 3 ms for every kind: "
              f"{'met' if t['overhead_ok'] else 'NOT met'}",
              f"- 16 clients p99 {t['p99_16']} ms = {t['p99_16_over_p50_1']}x the single-client median: target < 10x: "
              f"{'met' if t['p99_ok'] else 'NOT met'}. With 16 clients in a closed loop the mean latency is "
              f"16 / throughput (Little's law), so the target needs >= {t['rps_needed_16']} requests/s at 16 clients; "
              f"measured {t['rps_16']}.",
              *([f"- With the text cache on (server default; every text of the mix repeats, so text queries skip "
                 f"the tower after their first): 16 clients p99 {t['cached']['p99_16']} ms = {t['cached']['ratio']}x "
                 f"that server's single-client median {t['cached']['p50_1']} ms ({t['cached']['rps_16']} requests/s "
                 "at 16). This shows what repeated queries cost, not what new ones do."] if t.get("cached") else []),
              *([f"- With one compute thread (`--lanes 1`, the server before this option): 16 clients p99 "
                 f"{t['one_lane']['p99_16']} ms = {t['one_lane']['ratio']}x that server's single-client median "
                 f"{t['one_lane']['p50_1']} ms ({t['one_lane']['rps_16']} requests/s at 16)."] if t.get("one_lane") else []),
              f"- CPU: at 16 clients the server used {t['server_cpu_16']} ms and the clients {t['client_cpu_16']} ms of "
              f"CPU per request, so {os.cpu_count()} cores fully ours would allow at most "
              f"{t['rps_cpu_bound_16']} requests/s (measured {t['rps_16']}, load avg {t['load_16']}).",
              f"- errors: {t['errors']} (target 0)", "",
              "One forward pass in process, 1 torch thread, median ms (what batching saves; load avg "
              f"{res['encode_ms']['load_avg_1min']}): text tower "
              + ", ".join(f"{n} texts {v}" for n, v in res["encode_ms"]["text"].items())
              + "; ECG tower " + ", ".join(f"{n} ECGs {v}" for n, v in res["encode_ms"]["ecg"].items()) + ".", "",
              f"Command: `{res['command']}`", ""]
    if res.get("screenshots"):
        lines += ["Screenshots (headless Chromium): " + ", ".join(f"`{s}`" for s in res["screenshots"]), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="load time per concurrency level")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--blocks", type=int, default=30, help="alternating in-process / HTTP blocks of 10 queries")
    ap.add_argument("--data", type=Path, default=SHARED if (SHARED / "ptbxl_database.csv").exists() else EXAMPLE)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--no-screenshots", action="store_true")
    ap.add_argument("--no-ablation", action="store_true", help="skip the level on a server with --max-batch 1")
    ap.add_argument("--tag", default="", help="write serve_TAG.{json,md} (a second run kept beside the first)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from etp_search.export import index_data

    work = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    try:
        store = work / "store.h5"
        logger.info("indexing %s", args.data)
        index_data(args.data, store, progress=False)
        from indexing.store import EmbeddingStore

        with EmbeddingStore.open(store) as st:
            ids, rows = st.ids, len(st)
        files = record_files(args.data)
        uploads = [(args.data / "records100" / s / f"{n}.hea", args.data / "records100" / s / f"{n}.dat") for s, n in files[:20]]
        queries = Queries(ids, uploads)
        encode = encode_costs(store, TEXTS)
        logger.info("forward passes (ms): %s", encode)
        # Like for like with the in-process Searcher (which encodes every text): the text-vector
        # cache is off here; the mix's texts repeat, so with it on text queries skip the tower.
        proc, url = start_server(store, "--text-cache", "0")
        try:
            import httpx

            info = httpx.get(url + "/api/v1/info").json()
            baseline, http_paired, overhead_pairs = paired(store, url, queries, args.blocks)
            logger.info("in-process %s / HTTP %s / difference %s", baseline["p50_ms"], http_paired["p50_ms"], overhead_pairs)
            idle = []
            for n in args.clients:
                idle.append(load(url, queries, n, args.seconds, proc.pid))
                logger.info("%d clients: %s", n, {k: v for k, v in idle[-1].items() if k != "by_kind"})
        finally:
            stop_server(proc)
        # --- ablations, same run, each on its own server: the busiest level with each search computed
        # alone; one compute thread for every search (uploads' ECG forward in line); the server's
        # default of remembering text vectors (the mix asks its texts again and again)
        levels = sorted({min(args.clients), max(args.clients)}) if args.clients else []
        unbatched = ablation(store, queries, levels[-1:], args, "--max-batch", "1", "--text-cache", "0")
        one_lane = ablation(store, queries, levels, args, "--lanes", "1", "--text-cache", "0")
        cached = ablation(store, queries, levels, args)

        # --- the same while `index` appends to the served store: one `index` run per level, each over
        # a new share of the records, and each level stops when its run ends (so none runs after it)
        data2, store2 = work / "growing", work / "growing.h5"
        data2.mkdir()
        for name in ("ptbxl_database.csv", "scp_statements.csv"):
            shutil.copy(args.data / name, data2 / name)
        first = max(20, len(files) // 10)
        copy_records(args.data, data2, files[:first])
        index_data(data2, store2, progress=False)
        rest = files[first:]
        shares = [rest[i * len(rest) // len(args.clients):(i + 1) * len(rest) // len(args.clients)]
                  for i in range(len(args.clients))]
        proc, url = start_server(store2, "--refresh", "0.5", "--text-cache", "0")
        runs, appending, idx_rcs = [], [], []
        try:
            with EmbeddingStore.open(store2) as st:
                before, queries2 = len(st), Queries(st.ids, uploads)  # ids the growing store holds from the start
            exe = Path(sys.executable).with_name("etp-search")
            for n, share in zip(args.clients, shares):
                copy_records(args.data, data2, share)
                rows0 = httpx.get(url + "/api/v1/health").json()["rows"]
                t_idx = time.perf_counter()
                idx = subprocess.Popen([str(exe), "index", str(data2), "--store", str(store2), "--batch-size", "16", "--append-every", "16"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                done = threading.Event()
                threading.Thread(target=lambda p=idx, e=done: (p.wait(), e.set()), daemon=True).start()
                # Load starts once the run's first batch has landed, so the level runs while rows arrive.
                while httpx.get(url + "/api/v1/health").json()["rows"] == rows0 and not done.is_set():
                    time.sleep(0.1)
                appending.append(load(url, queries2, n, args.seconds, proc.pid, until=done))
                appending[-1]["index_running_at_end"] = not done.is_set()
                logger.info("%d clients while appending: %s", n, {k: v for k, v in appending[-1].items() if k != "by_kind"})
                idx_rcs.append(idx.wait())
                time.sleep(1.0)
                rows1 = httpx.get(url + "/api/v1/health").json()["rows"]
                runs.append({"clients": n, "rows_before": rows0, "rows_after": rows1,
                             "index_seconds": round(time.perf_counter() - t_idx - 1.0, 1),
                             "level_seconds": appending[-1]["seconds"]})
            after = httpx.get(url + "/api/v1/health").json()["rows"]
        finally:
            stop_server(proc)
        idx_rc = max(idx_rcs) if idx_rcs else 1
        if idx_rc != 0:
            raise SystemExit(f"etp-search index failed with exit code {idx_rc}")
        shots = [] if args.no_screenshots or browser_missing() else screenshots(store, args.out, uploads[0])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    p50_1 = next(r for r in idle if r["clients"] == 1)["p50_ms"] if 1 in args.clients else float("nan")
    p99_16 = next((r["p99_ms"] for r in idle if r["clients"] == 16), float("nan"))
    level16 = next((r for r in idle if r["clients"] == 16), {})
    by_kind = overhead_pairs["median_diff_by_kind_ms"]
    errors = sum(r["errors"] for r in idle + unbatched + one_lane + cached + appending)
    overhead = round(max(by_kind.values()), 2)  # the worst kind, not the mix
    res = {"benchmark": "serve", "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "rows": rows,
           "index": f"{info['indexes']['ecg']['factory']} index", "server_workers": info["workers"],
           "max_batch": info["batching"]["max_batch"],
           "seconds": args.seconds, "in_process": baseline, "http_paired": http_paired,
           "encode_ms": encode, "overhead_pairs": overhead_pairs, "idle": idle, "unbatched": unbatched, "one_lane": one_lane, "cached": cached, "appending": appending,
           "append": {"rows_before": before, "rows_after": after, "rows_added": after - before, "runs": runs,
                      "rows_seen_min": min(min(r["rows_seen"]) for r in appending),
                      "rows_seen_max": max(max(r["rows_seen"]) for r in appending),
                      "distinct_rows_seen": len({n for r in appending for n in r["rows_seen"]})},
           "targets": {"http_p50_1": http_paired["p50_ms"], "inproc_p50": baseline["p50_ms"], "http_overhead_ms": overhead,
                       "overhead_by_kind": by_kind, "overhead_ok": bool(overhead <= 3.0),
                       "p99_16": p99_16, "p99_16_over_p50_1": round(p99_16 / p50_1, 2),
                       "mix_overhead_ms": overhead_pairs["median_diff_ms"],
                       "rps_16": next((r["rps"] for r in idle if r["clients"] == 16), float("nan")),
                       # closed loop: mean latency = clients / throughput (Little's law), so p99 < 10 x p50_1
                       # needs at least this throughput at 16 clients
                       "rps_needed_16": round(16 / (10 * p50_1 / 1e3), 1),
                       "p99_ok": bool(p99_16 < 10 * p50_1), "errors": errors,
                       "server_cpu_16": level16.get("server_cpu_ms_per_request"),
                       "client_cpu_16": level16.get("client_cpu_ms_per_request"),
                       "rps_cpu_bound_16": round(os.cpu_count() * 1e3 / (level16.get("server_cpu_ms_per_request", 0)
                                                                        + level16.get("client_cpu_ms_per_request", 0)), 1)
                       if level16.get("server_cpu_ms_per_request") else float("nan"),
                       "load_16": level16.get("load_avg_1min"),
                       "cached": _p99_ratio(cached), "one_lane": _p99_ratio(one_lane)},
           "screenshots": shots, "command": "python benchmarks/bench_serve.py " + " ".join(sys.argv[1:])}
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"serve_{args.tag}" if args.tag else "serve"
    (args.out / f"{name}.json").write_text(json.dumps(portable(res), indent=2))
    (args.out / f"{name}.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
