"""A LocalCluster of 2 workers gives the labels of the single-process run (DSB2018 images, a stack, a bad file)."""

from __future__ import annotations

import logging
import os
import platform
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from napari_sam.batch import segment_batch
from napari_sam.viewer.sample_data import synthetic_nuclei

pytest.importorskip("distributed")

IDS = [  # three 256 x 256 fluorescence images and a 256 x 320 RGB(A) stained one
    "00071198d059ba7f5914a526d124d28e6d010c92466da21d4a04cd5413362552",
    "003cee89357d9fe13516167fd67b609a164651b21934585648c740d2c3d86dc1",
    "0280fa8f60f6bcae0f97d93c28f60be194f9309ff610dc5845e60455b0f87c21",
    "00ae65c1c6631ae6f2be1a449902976e6eb8483bf6b0740d00530220832c6d3e",
]
PARAMS = {"points_per_side": 10}  # nano at zoom 1 finds nothing on the first image at 6


def _read(path):
    return zarr.open_group(str(path), mode="r")["0"][:] if path.suffix == ".zarr" else tifffile.imread(path)


def test_local_cluster_matches_one_process(shared_data, tmp_path) -> None:
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"{shared_data / 'dsb2018' / 'images' / i}.png\n" for i in IDS))
    extra = tmp_path / "extra"
    extra.mkdir()
    tifffile.imwrite(extra / "stack.tif", np.stack([synthetic_nuclei((96, 96), n=6, seed=s) for s in (1, 1, 2)]))
    (extra / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00garbage")
    links: list[str] = []
    cluster = segment_batch([listing, extra], tmp_path / "cluster", model="nano_nuclei", workers=2,
                            params=PARAMS, on_start=links.append)
    single = segment_batch([listing, extra], tmp_path / "single", model="nano_nuclei", workers=0, params=PARAMS)
    print(cluster.describe(), cluster.extra, sep="\n")
    assert links and links[0].startswith("http")
    assert [r["status"] for r in cluster.records] == ["done"] * 4 + ["failed", "done"]
    assert "corrupt.png" in cluster.records[4]["input"] and not cluster.ok
    assert len(cluster.extra["model_loads"]) == 2 and set(cluster.extra["model_loads"].values()) == {1}
    for a, b in zip(cluster.records, single.records, strict=True):
        assert (a["status"], a["objects"]) == (b["status"], b["objects"])
        if a["status"] == "done":
            np.testing.assert_array_equal(_read(Path(a["output"])), _read(Path(b["output"])))
    assert int(cluster.records[0]["objects"]) > 0


def test_a_worker_killed_mid_batch_loses_nothing(tmp_path) -> None:
    """SIGKILL one of two workers after the first image: its task is run again elsewhere, every output
    equals the one-process run, and a rerun finds everything finished."""
    from distributed import LocalCluster

    src = tmp_path / "images"
    src.mkdir()
    for k in range(8):
        tifffile.imwrite(src / f"img{k}.tif", synthetic_nuclei((128, 160), n=10, seed=k))
    single = segment_batch([src], tmp_path / "single", model="nano_nuclei", workers=0, params=PARAMS)
    killed: list[int] = []
    # the workers compute with this process's thread count, so that floating-point sums match to the bit
    threads = str(torch.get_num_threads())
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.CRITICAL, env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}) as cluster:

        def kill_one(done: int, total: int) -> None:
            if done == 1 and not killed:
                nanny = next(iter(cluster.workers.values()))
                killed.append(nanny.pid)
                os.kill(nanny.pid, signal.SIGKILL)

        report = segment_batch([src], tmp_path / "cluster", model="nano_nuclei", scheduler=cluster.scheduler_address,
                               params=PARAMS, progress=kill_one)
        rerun = segment_batch([src], tmp_path / "cluster", model="nano_nuclei", scheduler=cluster.scheduler_address,
                              params=PARAMS)
    print(report.describe(), killed, sep="\n")
    assert len(killed) == 1
    assert [r["status"] for r in report.records] == ["done"] * 8, report.records
    for a, b in zip(report.records, single.records, strict=True):
        assert a["objects"] == b["objects"]
        np.testing.assert_array_equal(_read(Path(a["output"])), _read(Path(b["output"])))
    assert [r["status"] for r in rerun.records] == ["skipped"] * 8
    assert not list((tmp_path / "cluster").glob("*.partial*")) and not list((tmp_path / "cluster").glob(".*"))


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc tunables")
def test_restore_malloc_undoes_dasks_trim_threshold() -> None:
    """A process started as dask's nanny starts a worker (MALLOC_TRIM_THRESHOLD_=65536) maps fresh
    zero-filled pages for every large block it allocates; after restore_malloc it reuses freed memory as a
    plain process does. Counted in minor page faults over 20 blocks of 4 MiB."""
    code = textwrap.dedent("""
        import resource
        import numpy as np
        from napari_sam.batch.cluster import restore_malloc

        def faults():
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(20):
                block = np.ones(1 << 19)  # 4 MiB
                del block
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0

        before = faults()
        print(before, restore_malloc(), faults())
    """)
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    before, restored, after = out.split()
    print("page faults before", before, "after", after)
    assert restored == "True"
    assert int(before) > 8_000  # every block mapped afresh (~500 faults a block here: the kernel maps pages in pairs)
    assert int(after) < int(before) / 10  # the first block's pages, then reused
    plain = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    out = subprocess.run([sys.executable, "-c", code], env=plain, capture_output=True, text=True, check=True).stdout
    assert out.split()[1] == "False"  # a plain process is left as it is


def test_tiles_of_a_large_image_on_two_workers_match_one_process(tmp_path) -> None:
    """One task per tile on 2 workers (the workers at this process's thread count): the merged labels are
    generate_labels' in this process."""
    from distributed import LocalCluster

    from napari_sam.automatic.generator import AutomaticMaskGenerator
    from napari_sam.batch.tasks import get_model
    from napari_sam.weights.registry import automatic_params

    image = synthetic_nuclei((300, 420), n=40, seed=3)
    tifffile.imwrite(tmp_path / "big.tif", image)
    params = {"points_per_side": 12, "tile_size": 256, "tile_overlap": 64}
    threads = str(torch.get_num_threads())
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.CRITICAL, env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}) as cluster:
        report = segment_batch([tmp_path / "big.tif"], tmp_path / "out", model="nano_nuclei",
                               scheduler=cluster.scheduler_address, params=params)
    assert report.ok, report.describe()
    model = get_model("nano_nuclei")
    expected = AutomaticMaskGenerator(model, **automatic_params("nano_nuclei"), **params).generate_labels(image)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "big_labels.tif"), expected)
