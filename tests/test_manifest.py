import pytest

from pipeline.manifest import read_manifest, read_optout, youtube_id_of
from pipeline.records import seconds_to_samples


def write(tmp_path, text, name="m.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_avspeech_rows_parse_with_times_in_samples(tmp_path):
    m = read_manifest(write(tmp_path, "PmD-LzPS2rg,282.5823,285.5853,0.371875,0.425\n01qWxISqaHg,87,90,0.46875,0.3\n"))
    assert m.format == "avspeech"
    assert [c.clip_id for c in m.clips] == ["PmD-LzPS2rg_282582", "01qWxISqaHg_87000"]
    c = m.clips[0]
    assert c.identity == c.youtube_id == "PmD-LzPS2rg"
    assert c.start == seconds_to_samples(282.5823) and c.end == seconds_to_samples(285.5853)
    assert c.hint == (0.371875, 0.425) and c.line == 1


def test_bad_avspeech_rows_are_reported_with_line_and_the_rest_go_on(tmp_path):
    text = "\n".join(
        [
            "aaaaaaaaaaa,1,5,0.5,0.5",  # ok
            "bbbbbbbbbbb,abc,5,0.5,0.5",  # bad number
            "ccccccccccc,5,5,0.5,0.5",  # start >= end
            "ddddddddddd,1,5,1.5,0.5",  # x outside [0,1]
            "eeeeeeeeeee,1,5,0.5",  # 4 columns
            "aaaaaaaaaaa,1,5,0.5,0.5",  # duplicate id
            "not-an-id,1,5,0.5,0.5",
            "fffffffffff,2,7,0.5,0.5",  # ok
        ]
    )
    m = read_manifest(write(tmp_path, text + "\n"))
    assert [c.line for c in m.clips] == [1, 8]
    got = {(s.line, s.reason) for s in m.rejected}
    assert got == {
        (2, "bad_row"),
        (3, "bad_row"),
        (4, "bad_row"),
        (5, "bad_row"),
        (6, "duplicate_id"),
        (7, "bad_row"),
    }
    details = {s.line: s.detail for s in m.rejected}
    assert "line 2" in details[2] and "not a number" in details[2]
    assert "not before" in details[3]
    assert "outside [0, 1]" in details[4]
    assert all(s.status == "rejected" for s in m.rejected)
    assert m.n_rows == 8


def test_generic_rows_ids_identity_split_and_bad_rows(tmp_path):
    text = (
        "source,id,identity,start,end,x,y,split\n"
        "videos/a.mp4,a1,alice,,,,,\n"
        "https://example.org/v/talk.mp4,,bob,1.5,4,0.2,0.3,val\n"
        "https://youtu.be/PmD-LzPS2rg,,,,,,,\n"
        "b.mp4,b.1,bob,,,,,\n"  # dot in id
        "c.mp4,c1,carol,,,,,holdout\n"  # bad split
        ",x1,x,,,,,\n"  # empty source
        "d.mp4,d1,dan,3,2,,,\n"  # start >= end
        "e.mp4,e1,eve,,,0.5,,\n"  # x without y
        "f.mp4,a1,fay,,,,,\n"  # duplicate
    )
    m = read_manifest(write(tmp_path, text))
    assert m.format == "generic"
    a, b, yt = m.clips
    assert (a.clip_id, a.identity, a.start, a.end, a.split) == ("a1", "alice", None, None, None)
    assert b.split == "val" and b.start == 24000 and b.end == 64000 and b.hint == (0.2, 0.3)
    assert b.clip_id.startswith("talk-") and b.youtube_id is None
    assert yt.youtube_id == "PmD-LzPS2rg" and yt.identity == "PmD-LzPS2rg"
    reasons = {s.line: s.reason for s in m.rejected}
    assert reasons == {
        5: "bad_row",
        6: "bad_row",
        7: "bad_row",
        8: "bad_row",
        9: "bad_row",
        10: "duplicate_id",
    }
    ids = {s.line: s.id for s in m.rejected}
    assert ids[6] == "c1" and ids[5] == "line-5"


def test_derived_ids_are_stable_and_distinct(tmp_path):
    text = "source\nhttp://h1/video.mp4\nhttp://h2/video.mp4\n"
    one = read_manifest(write(tmp_path, text))
    two = read_manifest(write(tmp_path, text, "again.csv"))
    ids = [c.clip_id for c in one.clips]
    assert len(set(ids)) == 2 and ids == [c.clip_id for c in two.clips]


def test_optout_by_video_id_url_or_clip_id(tmp_path):
    optout = read_optout(
        write(tmp_path, "# comment\nhttps://www.youtube.com/watch?v=aaaaaaaaaaa\nc1  # asked\n", "o.txt")
    )
    m = read_manifest(
        write(tmp_path, "source,id\naaaaaaaaaaa,\nbbbbbbbbbbb,\nlocal.mp4,c1\n"),
        optout,
    )
    assert [c.source for c in m.clips] == ["bbbbbbbbbbb"]
    assert sorted(s.reason for s in m.rejected) == ["opted_out", "opted_out"]


def test_youtube_id_of():
    assert youtube_id_of("https://www.youtube.com/watch?v=PmD-LzPS2rg&t=3") == "PmD-LzPS2rg"
    assert youtube_id_of("https://www.youtube.com/shorts/PmD-LzPS2rg") == "PmD-LzPS2rg"
    assert youtube_id_of("http://127.0.0.1:8000/PmD-LzPS2rg.mp4") is None
    assert youtube_id_of("clip.mp4") is None


def test_a_split_override_applies_to_every_row_of_the_identity(tmp_path):
    m = read_manifest(
        write(tmp_path, "source,identity,split\na.mp4,ann,val\nb.mp4,ann,\nc.mp4,bo,\nd.mp4,cy,test\ne.mp4,cy,val\n")
    )
    assert [c.split for c in m.clips] == ["val", "val", None, "test", "val"]
    assert m.warnings and "cy" in m.warnings[0]


@pytest.mark.parametrize(
    "source, kind, value, rule",
    [
        ("yt:PmD-LzPS2rg", "youtube", "PmD-LzPS2rg", "yt: prefix"),
        ("yt:https://youtu.be/PmD-LzPS2rg", "youtube", "PmD-LzPS2rg", "yt: prefix"),
        ("file:hopper-talk", "file", "hopper-talk", "file: prefix"),
        ("file:videos/bob.mp4", "file", "videos/bob.mp4", "file: prefix"),
        ("file:///data/bob.mp4", "file", "/data/bob.mp4", "file:// URL"),
        ("https://example.org/talk.mp4", "url", "https://example.org/talk.mp4", "http(s) URL"),
        (
            "https://www.youtube.com/watch?v=PmD-LzPS2rg",
            "youtube",
            "https://www.youtube.com/watch?v=PmD-LzPS2rg",
            "YouTube URL",
        ),
        ("hopper-talk", "youtube", "hopper-talk", "bare 11-character name"),
        ("videos/bob.mp4", "file", "videos/bob.mp4", "local path"),
        ("astronaut-talk", "file", "astronaut-talk", "local path"),
    ],
)
def test_source_kinds_and_the_rule_that_gave_them(source, kind, value, rule):
    from pipeline.manifest import classify_source

    k, v, r = classify_source(source)
    assert (k, v) == (kind, value) and rule in r


def test_prefixed_sources_parse_and_bad_prefixes_are_bad_rows(tmp_path):
    m = read_manifest(
        write(tmp_path, "source,id\nyt:PmD-LzPS2rg,a\nfile:hopper-talk,b\nyt:not-an-id!,c\nfile:,d\nhopper-talk,e\n")
    )
    a, b, e = m.clips
    assert (a.source_kind, a.youtube_id, a.source) == ("youtube", "PmD-LzPS2rg", "PmD-LzPS2rg")
    assert (b.source_kind, b.youtube_id, b.source) == ("file", None, "hopper-talk")  # never downloaded
    assert (e.source_kind, e.youtube_id) == ("youtube", "hopper-talk")  # the old meaning, kept
    assert [(s.id, s.reason) for s in m.rejected] == [("c", "bad_row"), ("d", "bad_row")]
    assert "yt: must be followed" in m.rejected[0].detail
    # the ambiguous bare name is named in one warning, with how to say which
    assert len(m.warnings) == 1 and "line 6: 'hopper-talk'" in m.warnings[0] and "yt:ID or file:PATH" in m.warnings[0]


def test_a_prefix_does_not_change_the_derived_clip_id(tmp_path):
    plain = read_manifest(write(tmp_path, "source\nvideos/bob.mp4\n")).clips[0]
    prefixed = read_manifest(write(tmp_path, "source\nfile:videos/bob.mp4\n", "p.csv")).clips[0]
    assert plain.clip_id == prefixed.clip_id and plain.source == prefixed.source


def test_the_demo_manifest_names_files_not_youtube_ids():
    from flows.cli import DEMO_MANIFEST

    m = read_manifest(DEMO_MANIFEST)
    assert len(m.clips) == 9 and not m.rejected and not m.warnings  # six people, a two-face clip, two rejects
    assert all(c.source_kind == "file" and c.youtube_id is None for c in m.clips)
