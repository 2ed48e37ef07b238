"""The embedding cache with the real MiniLM encoder: a second embedding embeds nothing and returns the same bits,
only new texts are embedded, another encoder, max length or runtime misses, and writers at once never corrupt it."""

import struct
import subprocess
import sys
import textwrap
import time
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import torch
from loopwise.training import embeddings, runtime
from loopwise.training.embeddings import EmbeddingCache, embed_cached, embed_fp32, encoder_identity
from loopwise.training.model import EMBEDDING_DIM, embed_texts, load_encoder
from supportdesk import USE_CASE
from supportdesk.feed import generate_day

from assets.models import keys
from tests.conftest import Built

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def encoder():  # type: ignore[no-untyped-def]
    return load_encoder()


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Real synthetic ticket texts, a few repeated as a training set repeats them."""
    tickets = generate_day(date(2026, 3, 2), 30, seed=3).frames["tickets"]
    unique = list(dict.fromkeys((tickets["subject"] + ". " + tickets["body"]).tolist()))[:12]
    return unique + unique[:3]


@pytest.fixture(scope="module")
def reference(encoder, texts) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The texts embedded with no cache, one batch in their order."""
    return embed_fp32(*encoder, texts)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text the encoder is run on through the cache."""
    embedded: list[str] = []

    def recording(encoder, tokenizer, batch, *args, **kwargs):  # type: ignore[no-untyped-def]
        embedded.extend(batch)
        return embed_fp32(encoder, tokenizer, batch, *args, **kwargs)

    monkeypatch.setattr(embeddings, "embed_fp32", recording)
    return embedded


def test_a_second_embedding_embeds_nothing_and_returns_the_same_bits(encoder, texts, reference, spy,
                                                                     tmp_path: Path) -> None:
    model, tokenizer = encoder
    cold, first = embed_cached(model, tokenizer, texts, tmp_path)
    assert (first.embedded, first.reused) == (12, 0)
    assert sorted(spy) == sorted(set(texts))  # a text repeated in the set is embedded once
    spy.clear()
    warm, second = embed_cached(model, tokenizer, texts, tmp_path)
    assert (second.embedded, second.reused) == (0, 12) and spy == []
    assert second.summary() == "embedded 0 new texts, reused 12"
    assert warm.dtype == torch.float32 and warm.shape == (len(texts), EMBEDDING_DIM)
    assert torch.equal(warm, cold) and torch.equal(warm, reference)
    assert torch.equal(warm[12:], warm[:3])


def test_a_hit_is_what_embedding_the_text_again_gives_whatever_its_batch(encoder, texts, reference,
                                                                         tmp_path: Path) -> None:
    model, tokenizer = encoder
    embed_cached(model, tokenizer, texts[2:9], tmp_path)
    hits, stats = embed_cached(model, tokenizer, texts[:12], tmp_path)
    assert (stats.embedded, stats.reused) == (5, 7)
    # Embedded again from scratch, in another order, with other batch-mates, or alone: the same bits.
    again = embed_fp32(model, tokenizer, texts[:12][::-1], batch_size=5).flip(0)
    alone = torch.cat([embed_fp32(model, tokenizer, [t]) for t in texts[2:5]])
    assert torch.equal(hits, reference[:12]) and torch.equal(hits, again) and torch.equal(hits[2:5], alone)
    # The same embedding the padded batches of `embed_texts` compute, to float rounding.
    assert torch.allclose(hits, embed_texts(model, tokenizer, texts[:12]), atol=1e-5)


def test_adding_texts_embeds_only_the_new_ones(encoder, texts, reference, spy, tmp_path: Path) -> None:
    model, tokenizer = encoder
    embed_cached(model, tokenizer, texts[:8], tmp_path)
    spy.clear()
    both, stats = embed_cached(model, tokenizer, texts[4:12], tmp_path)
    assert (stats.embedded, stats.reused) == (4, 4)
    assert spy == texts[8:12]
    assert torch.equal(both, reference[4:12])


def test_another_encoder_or_max_length_misses(encoder, texts, tmp_path: Path) -> None:
    model, tokenizer = encoder
    embed_cached(model, tokenizer, texts[:4], tmp_path, max_length=64)
    same = EmbeddingCache(tmp_path, encoder_identity(model, tokenizer, 64, CPU))
    assert same.lookup(same.keys(texts[:4]))[1].all()

    shorter = EmbeddingCache(tmp_path, encoder_identity(model, tokenizer, 32, CPU))
    weight = model.embeddings.word_embeddings.weight
    kept = weight.data[0, 0].item()
    with torch.no_grad():
        weight[0, 0] += 1e-3  # fine-tuned by one step, say: new weights, a new digest
    try:
        changed = EmbeddingCache(tmp_path, encoder_identity(model, tokenizer, 64, CPU))
    finally:
        with torch.no_grad():
            weight[0, 0] = kept
    assert len({same.namespace, shorter.namespace, changed.namespace}) == 3
    for other in (shorter, changed):
        assert not other.lookup(other.keys(texts[:4]))[1].any()
    assert same.identity == encoder_identity(model, tokenizer, 64, CPU)  # the weights were restored


def test_an_onnx_scoring_runtime_never_reaches_the_cache(encoder, texts, reference, tmp_path: Path) -> None:
    """A process that scores with int8 ONNX (a service) still caches, and reads, PyTorch fp32 embeddings."""
    model, tokenizer = encoder
    before = runtime.scoring_runtime()
    runtime.use_scoring_runtime("onnx-int8", tmp_path / "runtime")
    try:
        cached, _ = embed_cached(model, tokenizer, texts[:4], tmp_path / "embeddings")
    finally:
        runtime.use_scoring_runtime(before.name, before.cache_dir, before.threads)
    assert torch.equal(cached, reference[:4])
    assert not (tmp_path / "runtime").exists()  # nothing was exported: ONNX Runtime never ran


def test_with_a_runtime_folder_onnx_runtime_embeds_on_cpu_in_its_own_namespace(encoder, texts, reference, spy,
                                                                                tmp_path: Path) -> None:
    """Training's path: new texts embedded by ONNX Runtime fp32 (exported into the service's folder), within float
    rounding of PyTorch; a second call embeds nothing and returns the stored bits; PyTorch's entries are not mixed in."""
    model, tokenizer = encoder
    embed_cached(model, tokenizer, texts[:4], tmp_path / "embeddings")  # PyTorch's namespace
    cold, first = embed_cached(model, tokenizer, texts, tmp_path / "embeddings", runtime_dir=tmp_path / "runtime")
    assert first.embedded == 12 and first.reused == 0  # PyTorch's four are not ONNX Runtime's
    assert list((tmp_path / "runtime").glob("encoder-*.onnx"))  # exported where the service looks for it
    assert spy == texts[:4]  # PyTorch ran only for its own call
    assert (cold - reference).abs().max().item() < 1e-5
    warm, second = embed_cached(model, tokenizer, texts, tmp_path / "embeddings", runtime_dir=tmp_path / "runtime")
    assert (second.embedded, second.reused) == (0, 12) and torch.equal(warm, cold)
    identities = {EmbeddingCache(tmp_path, encoder_identity(model, tokenizer, 64, CPU, runtime)).namespace
                  for runtime in ("torch", "onnx")}
    assert len(identities) == 2


WRITER = textwrap.dedent("""
    import struct, sys
    import numpy as np
    from loopwise.training.embeddings import EmbeddingCache
    root, writer = sys.argv[1], int(sys.argv[2])
    cache = EmbeddingCache(root, {"test": "writers at once"}, compact_above=3)
    for part in range(15):
        ids = [writer * 1_000_000 + part * 100 + j for j in range(40)]
        cache.add([struct.pack(">QQ", i, i) for i in ids],
                  np.repeat(np.asarray(ids, dtype=np.float32)[:, None], 384, axis=1))
""")


def test_writers_at_once_never_corrupt_the_cache(tmp_path: Path) -> None:
    """Two processes add parts (merging them as they go) while this one reads: every read is whole and right."""
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(w)]) for w in (1, 2)]
    cache = EmbeddingCache(tmp_path, {"test": "writers at once"})
    ids = np.asarray([w * 1_000_000 + p * 100 + j for w in (1, 2) for p in range(15) for j in range(40)])
    keys = [struct.pack(">QQ", i, i) for i in ids]
    reads = 0
    while any(w.poll() is None for w in writers) or reads == 0:
        vectors, found = cache.lookup(keys)  # a half-written part would raise or return wrong rows here
        assert (vectors[found] == ids[found, None].astype(np.float32)).all()
        reads += 1
        time.sleep(0.01)
    assert [w.wait() for w in writers] == [0, 0]
    vectors, found = cache.lookup(keys)
    assert found.all() and (vectors == ids[:, None].astype(np.float32)).all()
    assert not list(cache.folder.glob(".*.tmp"))
    assert len(cache.parts()) < 10  # merged as they went (30 parts were written)


def test_a_trained_text_model_reports_what_it_embedded_and_caches_it_under_the_data_root(built: Built) -> None:
    """The main job's first training of each model: a text model embeds every distinct text once and says so."""
    for spec in USE_CASE.models:
        event = built.instance.get_latest_materialization_event(keys(spec)["trained_model"])  # type: ignore[attr-defined]
        trained = {k: v.value for k, v in event.asset_materialization.metadata.items()}
        if spec.text:
            assert trained["texts_embedded"] > 0 and trained["texts_reused"] == 0, spec.name
        else:
            assert "texts_embedded" not in trained, spec.name
    assert list(built.settings.paths.embeddings.glob("*/part-*.arrow"))
