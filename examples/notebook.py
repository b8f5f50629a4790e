# %% [markdown]
# # Songs from a notebook, with the blocking client
#
# `aimlmusic.MusicClient` needs no `await`, and works in a Jupyter cell although Jupyter runs
# an event loop of its own: the client runs its loop in a background thread. Run the cells in
# order (VS Code and PyCharm read `# %%` as cells; `python examples/notebook.py` runs them
# all). Without a key, start an emulator (`aimlmusic emulator`) and set
# `AIMLMUSIC_BASE_URL` to the URL it prints and `AIML_API_KEY=test-key`.

# %%
from pathlib import Path

import aimlmusic

client = aimlmusic.MusicClient()  # key from AIML_API_KEY; closed in the last cell
out = Path("notebook-output")

# %% [markdown]
# One song: submit, wait, download.

# %%
song = aimlmusic.SongRequest(
    prompt="Warm lo-fi ballad, soft piano, brushed drums",
    lyrics="[Verse]\nStreetlights flicker, the night breeze sighs\n[Chorus]\nI find my way",
)
generation = client.generate(song)
path = client.download(generation, out / "ballad.mp3")
print(path, generation.music_info)

# %% [markdown]
# Many songs at once, within the account's limits, in the order they finish. Interrupting
# the cell (Ctrl-C, or the stop button) cancels the songs still running.

# %%
moods = ["sunrise", "rainy afternoon", "midnight"]
songs = [
    (mood, aimlmusic.SongRequest(f"Dreamy synthwave for a {mood}", "[Verse]\nDrive on, drive on"))
    for mood in moods
]
for result in client.generate_many(songs):
    if result.ok:
        client.download(result, out / f"{result.key}.mp3")
        print(f"{result.key}: {result.polls} polls")
    else:
        print(f"{result.key}: {result.error}")

# %%
client.close()
