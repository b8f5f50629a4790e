"""Attacks on the catalog layer (``run_catalog``, the journal, the stored files): each
hostile answer or broken environment must fail one song or stop with one clear message,
never crash a run, pay twice, or strand a paid song."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from aimlmusic import AudioSetting, SongRequest
from aimlmusic._converter import structure_generation
from aimlmusic.catalog._store import clear_partial, finish_download, part_path
from aimlmusic.emulator._audio import AudioRenderer, AudioSpec

PROMPT = "Warm lo-fi ballad with soft piano"
LYRICS = "[Verse]\nStreetlights flicker\n[Chorus]\nHome again"

#: ID3 headers mutagen cannot read: an unknown major version, a size past the file's end, and
#: flags no version defines.
HOSTILE_ID3_HEADERS = {
    "ID3v2.9": b"ID3\x09\x00\x00\x00\x00\x00\x10",
    "oversized": b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f",
    "invalid flags": b"ID3\x03\x00\xff\x00\x00\x00\x10",
}


def mp3_bytes() -> bytes:
    return AudioRenderer(0.5).render(PROMPT, AudioSpec("mp3", 44100, 128000)).data


def completed_generation() -> object:
    return structure_generation(
        {"id": "gen-1", "status": "completed", "audio_file": {"url": "http://127.0.0.1/x"}}
    )


@pytest.mark.parametrize("header", sorted(HOSTILE_ID3_HEADERS))
def test_an_mp3_whose_tag_mutagen_cannot_read_is_kept_untagged(tmp_path: Path, header: str) -> None:
    """A hostile ID3 header is a warning on that song: the file is stored as delivered."""
    data = HOSTILE_ID3_HEADERS[header] + b"\x00" * 16 + mp3_bytes()
    clear_partial(tmp_path)
    part = part_path(tmp_path, "song.mp3")
    part.write_bytes(data)
    stored = finish_download(
        part,
        tmp_path / "song.mp3",
        title="T",
        request=SongRequest(prompt=PROMPT, lyrics=LYRICS, audio_setting=AudioSetting("mp3")),
        generation=completed_generation(),  # type: ignore[arg-type]
        tag=True,
    )
    assert stored.tagged is False
    assert stored.tag_problem is not None
    assert "not tagged" in stored.tag_problem
    assert (tmp_path / "song.mp3").read_bytes() == data


def test_a_full_disk_while_tagging_stays_an_os_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while mutagen rewrites the tag is an OSError (the run stops), not a warning."""
    import mutagen.id3

    def no_space(self: object, *args: object, **kwargs: object) -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise mutagen.MutagenError(exc) from exc

    monkeypatch.setattr(mutagen.id3.ID3, "save", no_space)
    from aimlmusic.catalog._tags import tag_mp3

    path = tmp_path / "song.mp3"
    path.write_bytes(mp3_bytes())
    with pytest.raises(OSError) as caught:
        tag_mp3(path, title="T", lyrics=LYRICS, prompt=PROMPT, generation_id="g")
    assert caught.value.errno == errno.ENOSPC
