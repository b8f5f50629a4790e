"""Finished files: MP3 tagging that keeps the audio intact, hashing, and the atomic manifest."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from mutagen.id3 import ID3
from mutagen.mp3 import MP3

from aimlmusic import AudioSetting, SongRequest
from aimlmusic._converter import structure_generation
from aimlmusic.catalog import CatalogRow, Journal, SongState
from aimlmusic.catalog._manifest import ManifestWriter, manifest_record, write_manifest
from aimlmusic.catalog._store import (
    PARTIAL_DIR,
    clear_dead_partials,
    clear_partial,
    finish_download,
    part_path,
    partial_dir,
)
from aimlmusic.catalog._tags import GENERATION_ID_DESC, PROMPT_DESC, tag_mp3
from aimlmusic.emulator._audio import AudioRenderer, AudioSpec

PROMPT = "Warm lo-fi ballad with soft piano"
LYRICS = "[Verse]\nStreetlights flicker\n[Chorus]\nHome again, ünïcödé"


def audio(fmt: str) -> bytes:
    return AudioRenderer(1.0).render(PROMPT, AudioSpec(fmt, 44100, 128000)).data


def id3_size(data: bytes) -> int:
    """The length of a leading ID3v2 tag (header + syncsafe size), 0 if none."""
    if data[:3] != b"ID3":
        return 0
    size = 0
    for byte in data[6:10]:
        size = (size << 7) | byte
    return 10 + size


def test_tagging_an_mp3_keeps_its_audio_frames(tmp_path: Path) -> None:
    """Tags are added in front; the audio bytes after them are exactly the original ones."""
    original = audio("mp3")
    path = tmp_path / "song.mp3"
    path.write_bytes(original)
    before = MP3(path).info
    tag_mp3(path, title="Neon Rain", lyrics=LYRICS, prompt=PROMPT, generation_id="gen:1/x")
    tagged = path.read_bytes()
    start = id3_size(tagged)
    assert start > 0
    assert tagged[start:] == original[id3_size(original) :]
    after = MP3(path).info
    assert (after.length, after.sample_rate, after.bitrate) == (
        before.length,
        before.sample_rate,
        before.bitrate,
    )
    tags = ID3(path)
    assert tags["TIT2"].text == ["Neon Rain"]
    assert tags.getall("USLT")[0].text == LYRICS
    comments = {c.desc: c.text[0] for c in tags.getall("COMM")}
    assert comments == {PROMPT_DESC: PROMPT, GENERATION_ID_DESC: "gen:1/x"}


def test_retagging_replaces_our_frames_only(tmp_path: Path) -> None:
    """Tagging twice leaves one set of our frames and keeps foreign frames."""
    path = tmp_path / "song.mp3"
    path.write_bytes(audio("mp3"))
    tag_mp3(path, title="First", lyrics=LYRICS, prompt=PROMPT, generation_id="a")
    tags = ID3(path)
    from mutagen.id3 import TPE1

    tags.add(TPE1(encoding=3, text=["Someone"]))
    tags.save(path)
    tag_mp3(path, title="Second", lyrics=LYRICS, prompt=PROMPT, generation_id="b")
    tags = ID3(path)
    assert tags["TIT2"].text == ["Second"]
    assert tags["TPE1"].text == ["Someone"]
    assert len(tags.getall("COMM")) == 2
    assert len(tags.getall("USLT")) == 1


def test_a_file_that_is_not_mp3_is_not_altered(tmp_path: Path) -> None:
    """A WAV labelled as MP3 is refused by the tagger and left byte for byte."""
    path = tmp_path / "song.mp3"
    data = b"not audio at all, just text" * 10
    path.write_bytes(data)
    with pytest.raises(ValueError, match="not an MP3"):
        tag_mp3(path, title="x", lyrics=LYRICS, prompt=PROMPT, generation_id="g")
    assert path.read_bytes() == data


def generation(fmt: str, *, with_info: bool = True) -> object:
    body: dict[str, object] = {
        "id": "gen-1",
        "status": "completed",
        "audio_file": {"url": "http://127.0.0.1/x"},
    }
    if with_info:
        body["extra_info"] = {"music_duration": 1000, "music_sample_rate": 44100}
    return structure_generation(body)


@pytest.mark.parametrize("fmt", ["mp3", "wav", "pcm"])
def test_finish_download_hashes_the_final_bytes(tmp_path: Path, fmt: str) -> None:
    """The stored hash and size are those of the file in place (after tagging); WAV/PCM as is."""
    data = audio(fmt)
    clear_partial(tmp_path)
    part = part_path(tmp_path, f"song.{fmt}")
    part.write_bytes(data)
    final = tmp_path / f"song.{fmt}"
    request = SongRequest(prompt=PROMPT, lyrics=LYRICS, audio_setting=AudioSetting(fmt))  # type: ignore[arg-type]
    stored = finish_download(
        part,
        final,
        title="T",
        request=request,
        generation=generation(fmt),
        tag=True,  # type: ignore[arg-type]
    )
    assert not part.exists()
    content = final.read_bytes()
    assert stored.sha256 == hashlib.sha256(content).hexdigest()
    assert stored.size == len(content) == os.path.getsize(final)
    assert stored.tagged is (fmt == "mp3")
    assert (content == data) is (fmt != "mp3")
    assert (stored.duration, stored.sample_rate) == (1.0, 44100)


def test_audio_facts_are_read_from_the_file_without_extra_info(tmp_path: Path) -> None:
    """Without extra_info the duration and sample rate come from the WAV or MP3 itself."""
    clear_partial(tmp_path)
    for fmt in ("wav", "mp3"):
        part = part_path(tmp_path, f"s.{fmt}")
        part.write_bytes(audio(fmt))
        request = SongRequest(prompt=PROMPT, lyrics=LYRICS, audio_setting=AudioSetting(fmt))  # type: ignore[arg-type]
        stored = finish_download(
            part,
            tmp_path / f"s.{fmt}",
            title="",
            request=request,
            generation=generation(fmt, with_info=False),  # type: ignore[arg-type]
            tag=False,
        )
        assert stored.sample_rate == 44100
        assert stored.duration is not None
        assert abs(stored.duration - 1.0) < 0.1


def test_clear_partial_throws_away_leftovers(tmp_path: Path) -> None:
    """Leftover downloads are removed and a planted symlink is not followed."""
    clear_partial(tmp_path)
    leftover = part_path(tmp_path, "a.mp3")
    leftover.write_bytes(b"half")
    (leftover.parent / ".a.mp3.x1y2.part").write_bytes(b"temp")
    clear_partial(tmp_path)
    assert list(leftover.parent.iterdir()) == []
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep")
    leftover.parent.rmdir()
    leftover.parent.symlink_to(outside, target_is_directory=True)
    clear_partial(tmp_path)
    assert (outside / "precious").read_bytes() == b"keep"
    assert leftover.parent.is_dir()
    assert not leftover.parent.is_symlink()


def test_write_manifest_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while writing leaves the previous manifest intact and no temporary file."""
    path = tmp_path / "manifest.jsonl"
    write_manifest(path, [{"key": "a"}])

    def broken() -> object:
        yield {"key": "b"}
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_manifest(path, broken())  # type: ignore[arg-type]
    assert path.read_text(encoding="utf-8") == '{"key": "a"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.jsonl"]


def test_manifest_records_follow_the_journal(tmp_path: Path) -> None:
    """The manifest lists every song with status, file, hash, credits, timings and errors."""
    request = SongRequest(prompt=PROMPT, lyrics=LYRICS)
    rows = [CatalogRow(key=k, title=k.upper(), request=request, line=i) for i, k in enumerate("ab")]
    rows[1] = CatalogRow(
        key="b", title="B", request=SongRequest(prompt=PROMPT, lyrics=LYRICS + "!"), line=2
    )
    with Journal.in_directory(tmp_path, endpoint="e") as journal:
        assert journal.sync_catalog(rows) == []
        writer = ManifestWriter(tmp_path / "manifest.jsonl", journal, min_interval=3600)
        journal.mark_submitting("a")
        journal.mark_submitted("a", "gen-a")
        completed = structure_generation(
            {
                "id": "gen-a",
                "status": "completed",
                "audio_file": {"url": "http://127.0.0.1/x"},
                "meta": {"usage": {"credits_used": 50}},
                "extra_info": {"music_duration": 61500, "music_sample_rate": 32000},
            }
        )
        journal.mark_completed("a", completed, polls=3, generation_seconds=58.25)
        journal.mark_downloaded("a", sha256="ab" * 32, size=999, tagged=True)
        journal.mark_submitting("b")
        journal.mark_failed("b", "rejected: Body validation error!")
        writer.changed()
        writer.changed()  # coalesced: within min_interval
        assert writer.writes == 1
        writer.flush()
        assert writer.writes == 2
        records = [
            json.loads(line)
            for line in (tmp_path / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
        ]
        assert records == [manifest_record(e) for e in journal.entries()]
    a, b = records
    assert a["status"] == SongState.DOWNLOADED.value
    assert a["file"] == "A.mp3"
    assert (a["duration"], a["sample_rate"], a["bytes"], a["sha256"]) == (
        61.5,
        32000,
        999,
        "ab" * 32,
    )
    assert (a["credits_used"], a["polls"], a["generation_id"], a["error"]) == (
        50.0,
        3,
        "gen-a",
        None,
    )
    assert a["timings"]["generation_seconds"] == 58.25
    assert a["timings"]["downloaded_at"]
    assert b["status"] == "failed"
    assert b["file"] is None
    assert b["error"] == {"type": None, "message": "rejected: Body validation error!"}


def test_manifest_rewrites_back_off_when_they_are_slow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rewrite that took 5 s delays the next one by 50 s; flush always writes."""
    from aimlmusic.catalog import _manifest

    now = [0.0]

    def slow_write(path: object, records: object, **options: object) -> None:
        list(records)  # type: ignore[call-overload]
        now[0] += 5.0

    monkeypatch.setattr(_manifest, "write_manifest", slow_write)
    with Journal.in_directory(tmp_path, endpoint="e") as journal:
        writer = ManifestWriter(tmp_path / "m.jsonl", journal, monotonic=lambda: now[0])
        writer.changed()
        assert writer.writes == 1
        now[0] += 30.0
        writer.changed()
        assert writer.writes == 1
        now[0] += 20.0
        writer.changed()
        assert writer.writes == 2
        writer.flush()
        assert writer.writes == 2  # nothing changed since
        writer.flush(force=True)
        assert writer.writes == 3


def test_dead_workers_partial_directories_are_cleared_and_live_ones_kept(tmp_path: Path) -> None:
    """Only the partial directories of workers neither live nor this one are thrown away."""
    for worker in ("me", "alive", "dead-1", "dead/2"):
        part = partial_dir(tmp_path, worker) / "song.mp3.part"
        part.parent.mkdir(parents=True)
        part.write_bytes(b"x")
    removed = clear_dead_partials(tmp_path, worker="me", live=["alive"])
    assert removed == ["worker-dead-1", "worker-dead_2"]
    left = sorted(p.name for p in (tmp_path / PARTIAL_DIR).iterdir())
    assert left == ["worker-alive", "worker-me"]


def test_the_manifest_temporary_file_is_made_in_the_given_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With temp_dir, the manifest's temporary file lives there (a worker's partial
    directory), never beside the manifest, where a killed writer would strand it."""
    made: list[str] = []
    real = os.replace

    def watch(src: str, dst: str) -> None:
        made.append(str(src))
        real(src, dst)

    monkeypatch.setattr(os, "replace", watch)
    temp_dir = tmp_path / PARTIAL_DIR / "worker-a"
    write_manifest(tmp_path / "manifest.jsonl", [{"key": "a"}], temp_dir=temp_dir)
    assert [Path(m).parent for m in made] == [temp_dir]
    assert (tmp_path / "manifest.jsonl").read_text(encoding="utf-8") == '{"key": "a"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == [PARTIAL_DIR, "manifest.jsonl"]


def test_finish_download_never_replaces_a_file_that_is_not_the_song(tmp_path: Path) -> None:
    """A different file already at the song's name is kept (FileExistsError, the download
    stays to finish); the same bytes (a run that died before recording them) are replaced."""
    clear_partial(tmp_path)
    request = SongRequest(prompt=PROMPT, lyrics=LYRICS, audio_setting=AudioSetting("wav"))
    final = tmp_path / "song.wav"
    final.write_bytes(b"my own recording")
    part = part_path(tmp_path, "song.wav")
    part.write_bytes(audio("wav"))
    with pytest.raises(FileExistsError, match=r"song\.wav is already in the output directory"):
        finish_download(
            part, final, title="T", request=request, generation=generation("wav"), tag=False
        )
    assert final.read_bytes() == b"my own recording"
    final.write_bytes(audio("wav"))
    stored = finish_download(
        part, final, title="T", request=request, generation=generation("wav"), tag=False
    )
    assert stored.sha256 == hashlib.sha256(audio("wav")).hexdigest()
    assert not part.exists()


@pytest.mark.parametrize("retag", ["title", "untagged-then-tagged", "tagged-then-untagged"])
def test_finish_download_recognises_its_own_mp3_under_other_tags(
    tmp_path: Path, retag: str
) -> None:
    """An MP3 at the song's name holding the song's audio under other tags (a run that died
    before recording it, rerun with another title or --no-tag) is the song: it is replaced."""
    clear_partial(tmp_path)
    request = SongRequest(prompt=PROMPT, lyrics=LYRICS, audio_setting=AudioSetting("mp3"))
    final = tmp_path / "song.mp3"
    first_tag, second_tag = {
        "title": (True, True),
        "untagged-then-tagged": (False, True),
        "tagged-then-untagged": (True, False),
    }[retag]
    for title, tag in (("Old title", first_tag), ("New title", second_tag)):
        part = part_path(tmp_path, "song.mp3")
        part.write_bytes(audio("mp3"))
        stored = finish_download(
            part, final, title=title, request=request, generation=generation("mp3"), tag=tag
        )
        assert not part.exists()
    assert stored.sha256 == hashlib.sha256(final.read_bytes()).hexdigest()
    assert stored.tagged is second_tag


def test_finish_download_keeps_an_mp3_whose_audio_is_not_the_songs(tmp_path: Path) -> None:
    """An MP3 at the song's name carrying this song's tags but other audio is not replaced."""
    clear_partial(tmp_path)
    request = SongRequest(prompt=PROMPT, lyrics=LYRICS, audio_setting=AudioSetting("mp3"))
    final = tmp_path / "song.mp3"
    other = AudioRenderer(1.0).render("another tune", AudioSpec("mp3", 44100, 128000)).data
    final.write_bytes(other)
    tag_mp3(final, title="T", lyrics=LYRICS, prompt=PROMPT, generation_id="gen-1")
    before = final.read_bytes()
    part = part_path(tmp_path, "song.mp3")
    part.write_bytes(audio("mp3"))
    with pytest.raises(FileExistsError, match="is not this song's"):
        finish_download(
            part, final, title="T", request=request, generation=generation("mp3"), tag=True
        )
    assert final.read_bytes() == before


def _syncsafe(n: int) -> bytes:
    return bytes([(n >> 21) & 0x7F, (n >> 14) & 0x7F, (n >> 7) & 0x7F, n & 0x7F])


def test_finish_download_recognises_its_own_mp3_delivered_with_an_id3v24_footer(
    tmp_path: Path,
) -> None:
    """An MP3 delivered with an ID3v2.4 tag and footer is its own song once re-tagged: the
    old footer tagging leaves behind is no audio (it made the song's own file 'not this
    song's' when --no-tag changed)."""
    frame = b"TIT2" + _syncsafe(4) + b"\0\0" + b"\x03enc"
    header = b"ID3" + bytes([4, 0, 0x10]) + _syncsafe(len(frame))
    footer = b"3DI" + bytes([4, 0, 0x10]) + _syncsafe(len(frame))
    delivered = header + frame + footer + audio("mp3")
    clear_partial(tmp_path)
    request = SongRequest(prompt=PROMPT, lyrics=LYRICS, audio_setting=AudioSetting("mp3"))
    final = tmp_path / "song.mp3"
    for tag in (True, False):
        part = part_path(tmp_path, "song.mp3")
        part.write_bytes(delivered)
        finish_download(
            part, final, title="T", request=request, generation=generation("mp3"), tag=tag
        )
    assert final.read_bytes() == delivered
