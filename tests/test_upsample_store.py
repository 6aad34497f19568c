"""Block-written catalogs: chunk-aligned regions, edge pieces, resume, and the final swap."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import zarr

import galmock
from galmock.errors import InputError
from galmock.store import (
    STAR_COLUMNS,
    BlockCatalog,
    OpenBlockCatalog,
    RowLayout,
    columns_sha256,
    is_current,
    open_catalog,
    write_star_catalog,
)


def rows(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c: (rng.normal(size=n) * 100).astype(s.dtype) for c, s in STAR_COLUMNS.items()}


def test_layout_blocks_pieces_and_edge_chunks() -> None:
    layout = RowLayout((3, 0, 10, 2, 5), chunk_rows=4)
    assert layout.offsets.tolist() == [0, 3, 3, 13, 15, 20] and layout.n_chunks == 5
    # Boundaries at 3, 13, 15 cut chunks 0 and 3; 20 is the end, not a cut.
    assert layout.edge_chunks() == [0, 3]
    assert layout.segments(2) == [(3, 4, True), (4, 8, False), (8, 12, False), (12, 13, True)]
    assert layout.segments(1) == [] and layout.segments(4) == [(15, 16, True), (16, 20, False)]
    assert layout.pieces(3) == [(12, 13), (13, 15), (15, 16)]
    # Every row is in exactly one segment; whole-chunk segments are whole chunks.
    covered = sorted((a, b) for i in range(5) for a, b, _ in layout.segments(i))
    assert covered[0][0] == 0 and covered[-1][1] == 20
    assert all(b0 == a1 for (_, b0), (a1, _) in itertools.pairwise(covered))
    assert RowLayout((4, 4), 4).edge_chunks() == [] and RowLayout((), 4).n_rows == 0


def write_blocks(cat: BlockCatalog, data: dict[str, np.ndarray], order, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for i in order:
        a, b = cat.layout.block(i)
        with cat.writer(i) as w:
            cuts = np.sort(rng.integers(a, b + 1, size=3))  # uneven batches, some empty
            for lo, hi in zip([a, *cuts], [*cuts, b]):
                w.append({c: v[lo:hi] for c, v in data.items()})
        cat.record(w.record)


def test_blocks_in_any_order_give_a_dense_catalog_with_checksums(tmp_path) -> None:
    counts = (7, 0, 23, 1, 40, 9)
    data = rows(sum(counts), 0)
    target = tmp_path / "stars.zarr"
    layout = RowLayout(counts, chunk_rows=8)
    cat = BlockCatalog.prepare(target, layout, STAR_COLUMNS, "fp-1", {"job": "t"},
                               array_attrs={"x": {"frame": "test"}})
    write_blocks(cat, data, [4, 0, 5, 2, 1, 3], seed=1)
    other = BlockCatalog.open(target)  # what another rank sees
    for k in other.layout.edge_chunks():
        other.assemble(k)
    assert not target.exists()  # nothing visible until finalize
    other.finalize({"extra": 1})
    out = open_catalog(target)
    assert len(out) == sum(counts) and out.chunk_rows == 8
    for c, v in out.read().items():
        np.testing.assert_array_equal(v, data[c])
    attrs = out.attrs
    assert attrs["fingerprint"] == "fp-1" and attrs["job"] == "t" and attrs["extra"] == 1
    assert out.array("x").attrs["frame"] == "test"
    for rec in attrs["blocks"]:
        a, b = rec["start"], rec["start"] + rec["rows"]
        assert rec["sha256"] == columns_sha256({c: v[a:b] for c, v in data.items()})
    assert [p.name for p in tmp_path.iterdir()] == ["stars.zarr"]  # staging removed
    assert is_current(target, "fp-1") and not is_current(target, "fp-2")


def test_resume_keeps_finished_blocks_and_a_new_fingerprint_starts_afresh(tmp_path) -> None:
    target = tmp_path / "stars.zarr"
    layout = RowLayout((5, 6), chunk_rows=4)
    data = rows(11, 2)
    cat = BlockCatalog.prepare(target, layout, STAR_COLUMNS, "fp")
    write_blocks(cat, data, [1], seed=0)
    # A region killed half-way: rows appended, never closed or recorded.
    cat.writer(0).append({c: v[:2] for c, v in data.items()})
    assert sorted(BlockCatalog.prepare(target, layout, STAR_COLUMNS, "fp").done()) == [1]
    assert BlockCatalog.prepare(target, layout, STAR_COLUMNS, "other").done() == {}


def test_resume_removes_chunk_files_a_killed_writer_left(tmp_path) -> None:
    """Zarr writes a chunk to <key>.<uuid>.partial, then renames it; a SIGKILL in between left
    that file, and the resumed catalog carried it into stars.zarr (seen in the kill test)."""
    target = tmp_path / "stars.zarr"
    layout = RowLayout((5, 6), chunk_rows=4)
    data = rows(11, 3)
    cat = BlockCatalog.prepare(target, layout, STAR_COLUMNS, "fp")
    write_blocks(cat, data, [1], seed=0)
    stray = cat.store / "vx" / "c" / "0.ca904cdaf58f4e52a28192caa24e2b54.partial"
    stray.write_bytes(b"half a chunk")
    cat = BlockCatalog.prepare(target, layout, STAR_COLUMNS, "fp")  # the rerun resumes
    assert not stray.exists() and sorted(cat.done()) == [1]
    write_blocks(cat, data, [0], seed=0)
    for k in layout.edge_chunks():
        cat.assemble(k)
    final = cat.finalize()
    assert not list(final.rglob("*.partial"))
    np.testing.assert_array_equal(open_catalog(final).read(columns=["vx"])["vx"], data["vx"])


def test_finalize_replaces_an_old_catalog_only_when_complete(tmp_path) -> None:
    target = tmp_path / "stars.zarr"
    write_star_catalog(target, rows(3, 0), chunk_rows=2)
    layout = RowLayout((4,), chunk_rows=2)
    cat = BlockCatalog.prepare(target, layout, STAR_COLUMNS, "new")
    with pytest.raises(Exception, match=r"block\(s\) \[0\] are not written yet"):
        cat.finalize()
    assert len(open_catalog(target)) == 3  # the old catalog is intact meanwhile
    write_blocks(cat, rows(4, 5), [0], seed=0)
    cat.finalize()
    assert len(open_catalog(target)) == 4


def test_writer_refuses_wrong_row_counts(tmp_path) -> None:
    cat = BlockCatalog.prepare(tmp_path / "s.zarr", RowLayout((3,), 2), STAR_COLUMNS, "fp")
    w = cat.writer(0)
    with pytest.raises(ValueError, match="4 rows appended, the block has 3"):
        w.append(rows(4, 0))
    w.append(rows(2, 0))
    with pytest.raises(ValueError, match="2 rows appended, the block has 3"):
        w.close()
    with pytest.raises(ValueError, match="columns"):
        w.append({"x": np.zeros(1)})


def test_open_catalog_is_exported_and_lazy(tmp_path) -> None:
    data = rows(25, 3)
    path = write_star_catalog(tmp_path / "stars.zarr", data, chunk_rows=10)
    cat = galmock.open_catalog(path)
    df = cat.to_dataframe(["x", "region"])
    assert df.npartitions == 3 and list(df.columns) == ["x", "region"]
    frame = df.compute()
    np.testing.assert_array_equal(frame["x"].to_numpy(), data["x"])
    assert frame.index.tolist() == list(range(25))
    assert cat.to_dask(["mass"])["mass"].chunks == ((10, 10, 5),)


@pytest.mark.parametrize("cut", [1, 3, 5, 6])
def test_a_block_resumes_from_its_checkpoint_to_the_same_rows_and_checksum(tmp_path, cut) -> None:
    """A writer checkpointed after ``cut`` of 7 batches and killed; a new writer resumes and
    finishes: the block's rows and sha256 are those of an uninterrupted write (tail rows
    buffered at the checkpoint included; cut 5 leaves a tail inside a whole chunk)."""
    layout = RowLayout((3, 40, 5), chunk_rows=8)  # block 1: piece 3:8, chunks 8..40, piece 40:43
    data = rows(40, seed=9)
    sizes = [5, 7, 2, 9, 6, 4, 7]

    def batches():
        start = 0
        for size in sizes:
            yield {c: v[start : start + size] for c, v in data.items()}
            start += size

    whole = BlockCatalog.prepare(tmp_path / "a.zarr", layout, STAR_COLUMNS, "fp")
    with whole.writer(1) as w:
        for batch in batches():
            w.append(batch)
    expected = w.record

    cat = BlockCatalog.prepare(tmp_path / "b.zarr", layout, STAR_COLUMNS, "fp")
    first = cat.writer(1)
    for i, batch in enumerate(batches()):
        if i == cut:
            break
        first.append(batch)
    first.checkpoint({"batch": cut})
    first.append(rows(3, seed=1))  # written after the checkpoint, then "killed": not kept
    second = BlockCatalog.open(tmp_path / "b.zarr").writer(1)
    assert second.resume() == {"batch": cut}
    assert second.rows == sum(sizes[:cut])
    for batch in itertools.islice(batches(), cut, None):
        second.append(batch)
    assert second.close() == expected
    for c in STAR_COLUMNS:  # the whole chunks as stored, rewritten past the checkpoint
        np.testing.assert_array_equal(zarr.open_array(cat.store / c)[8:40],
                                      zarr.open_array(whole.store / c)[8:40])
    cat.record(second.record)
    assert not cat.progress_path(1).exists()  # superseded by the record
    assert cat.writer(0).resume() is None  # no checkpoint: the block starts over


def test_open_blocks_of_lengths_found_while_writing_give_a_dense_catalog(tmp_path) -> None:
    """Magnitude-limited regions keep a random share of their draws: blocks of unknown length
    (0, 3, 17, 8 rows), written in any order, assembled into every chunk; a missing piece is an
    error naming it."""
    counts = (0, 3, 17, 8)
    data = rows(sum(counts), 5)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    target = tmp_path / "stars.zarr"
    cat = OpenBlockCatalog.prepare(target, len(counts), STAR_COLUMNS, "fp", {"job": "t"},
                                   chunk_rows=8, array_attrs={"x": {"frame": "test"}})
    for block in (2, 0, 3, 1):
        with cat.writer(block) as w:
            a = offsets[block]
            for size in (2, 9, 100):  # batches across piece boundaries
                b = min(a + size, offsets[block + 1])
                w.append({c: v[a:b] for c, v in data.items()})
                a = b
        cat.record(w.record)
        assert w.record["rows"] == counts[block]
    assert OpenBlockCatalog.progress(cat.staging) == (4, 4, 28, None)
    other = OpenBlockCatalog.open(target)  # another rank
    assert other.allocate() == 4
    broken = other.piece_path(2, 1)
    hidden = broken.with_name("hidden")
    broken.rename(hidden)
    with pytest.raises(InputError, match="piece-000001: piece missing"):
        for k in range(4):
            other.assemble(k)
    hidden.rename(broken)
    for k in range(4):
        other.assemble(k)
    assert not target.exists()
    other.finalize()
    out = open_catalog(target)
    assert len(out) == 28 and out.array("x").attrs["frame"] == "test"
    for c, v in out.read().items():
        np.testing.assert_array_equal(v, data[c])
    for rec in out.attrs["blocks"]:
        a, b = offsets[rec["block"]], offsets[rec["block"] + 1]
        assert rec["sha256"] == columns_sha256({c: v[a:b] for c, v in data.items()})
    assert is_current(target, "fp") and [p.name for p in tmp_path.iterdir()] == ["stars.zarr"]


@pytest.mark.parametrize("cut", [1, 2, 4])
def test_an_open_block_resumes_from_its_checkpoint(tmp_path, cut) -> None:
    """Checkpointed after ``cut`` of 5 batches, more rows appended and lost: the resumed writer
    ends with the rows and checksum of an uninterrupted one; a fingerprint change starts
    afresh, the same one keeps finished blocks."""
    data = rows(30, 7)
    sizes = [4, 9, 3, 8, 6]
    starts = np.concatenate([[0], np.cumsum(sizes)])

    def batch(i: int) -> dict[str, np.ndarray]:
        return {c: v[starts[i] : starts[i + 1]] for c, v in data.items()}

    whole = OpenBlockCatalog.prepare(tmp_path / "a.zarr", 1, STAR_COLUMNS, "fp", chunk_rows=8)
    with whole.writer(0) as w:
        for i in range(5):
            w.append(batch(i))
    cat = OpenBlockCatalog.prepare(tmp_path / "b.zarr", 1, STAR_COLUMNS, "fp", chunk_rows=8)
    first = cat.writer(0)
    for i in range(cut):
        first.append(batch(i))
    first.checkpoint({"batch": cut})
    first.append(rows(9, 1))  # after the checkpoint, then killed
    again = OpenBlockCatalog.prepare(tmp_path / "b.zarr", 1, STAR_COLUMNS, "fp", chunk_rows=8)
    second = again.writer(0)
    assert second.resume() == {"batch": cut} and second.rows == starts[cut]
    for i in range(cut, 5):
        second.append(batch(i))
    assert second.close() == w.record
    again.record(second.record)
    assert sorted(OpenBlockCatalog.prepare(tmp_path / "b.zarr", 1, STAR_COLUMNS, "fp",
                                           chunk_rows=8).done()) == [0]
    assert OpenBlockCatalog.prepare(tmp_path / "b.zarr", 1, STAR_COLUMNS, "new",
                                    chunk_rows=8).done() == {}
