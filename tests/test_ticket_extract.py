"""What tickets name: robot.tickets.extract."""
from __future__ import annotations


import pytest

from robot.classify import load_table
from robot.tickets.extract import MAX_SCAN_CHARS, Mention, TopologyIndex, extract
from robot.topology import EndpointInfo, QueueInfo, SiteInfo, Topology

TOPOLOGY = Topology(
    sites=(SiteInfo("MWT2", "US"), SiteInfo("BNL-ATLAS", "US"), SiteInfo("FZK-LCG2", "DE"),
           SiteInfo("RRC-KI-T1", "RU"), SiteInfo("IN2P3-CC", "FR")),
    endpoints=(EndpointInfo("MWT2_DATADISK", "MWT2"), EndpointInfo("BNL-OSG2_DATADISK", "BNL-ATLAS"),
               EndpointInfo("FZK-LCG2_DATADISK", "FZK-LCG2"), EndpointInfo("IN2P3-CC_DATADISK", "IN2P3-CC")),
    queues=(QueueInfo("ANALY_MWT2_UCORE", "MWT2", "US", ("MWT2_DATADISK",)),
            QueueInfo("ANALY_BNL_LONG", "BNL-ATLAS", "US", ("BNL-OSG2_DATADISK",)),
            QueueInfo("ANALY_FZK", "FZK-LCG2", "DE", ("FZK-LCG2_DATADISK",)),
            QueueInfo("ANALY_FZK_SHORT", "FZK-LCG2", "DE", ("FZK-LCG2_DATADISK",)),
            QueueInfo("RRC-KI-T1_MCORE", "RRC-KI-T1", "RU", ()),
            QueueInfo("ANALY_IN2P3-CC", "IN2P3-CC", "FR", ("IN2P3-CC_DATADISK",))),
)
TABLE = load_table()


@pytest.fixture(scope="module")
def index() -> TopologyIndex:
    return TopologyIndex.from_topology(TOPOLOGY, aliases={"BNL": "BNL-ATLAS", "Karlsruhe": "FZK-LCG2"})


def run(body: str, index: TopologyIndex, subject: str = "") -> list[Mention]:
    return extract(subject, body, index, TABLE)


def one(found: list[Mention], kind: str, value: str | None = None) -> Mention:
    hits = [m for m in found if m.kind == kind and (value is None or m.value == value)]
    assert len(hits) == 1, (kind, value, found)
    return hits[0]


def kinds(found: list[Mention], kind: str) -> list[str]:
    return [m.value for m in found if m.kind == kind]


def test_each_topology_kind_is_found_and_resolved(index):
    found = run("Jobs at ANALY_MWT2_UCORE fail, FZK-LCG2 too; reading from BNL-OSG2_DATADISK "
                "breaks, and the whole DE cloud is slow.", index, subject="Help")
    queue = one(found, "queue", "ANALY_MWT2_UCORE")
    assert (queue.queue, queue.site, queue.cloud, queue.complaint) == ("ANALY_MWT2_UCORE", "MWT2", "US", True)
    site = one(found, "site", "FZK-LCG2")
    assert (site.queue, site.site, site.cloud) == (None, "FZK-LCG2", "DE")
    endpoint = one(found, "endpoint", "BNL-OSG2_DATADISK")
    assert (endpoint.site, endpoint.cloud) == ("BNL-ATLAS", "US")
    cloud = one(found, "cloud", "DE")
    assert cloud.cloud == "DE" and cloud.complaint
    assert "ANALY_MWT2_UCORE" in queue.snippet and len(queue.snippet) <= 100
    assert [m.kind for m in found] == ["queue", "site", "endpoint", "cloud"]  # order of appearance


def test_queue_without_prefix_case_insensitive_and_aliases(index):
    found = run("mwt2_ucore is broken, so is analy_bnl_long and Rrc-Ki-T1_mcore. BNL storage too; "
                "ANALY_RRC-KI-T1_MCORE as well.", index)
    assert one(found, "queue", "mwt2_ucore").queue == "ANALY_MWT2_UCORE"
    assert one(found, "queue", "analy_bnl_long").queue == "ANALY_BNL_LONG"
    assert one(found, "queue", "Rrc-Ki-T1_mcore").queue == "RRC-KI-T1_MCORE"  # later spelling merged
    bnl = one(found, "site", "BNL")
    assert (bnl.site, bnl.cloud) == ("BNL-ATLAS", "US")


def test_clouds_only_when_used_as_clouds(index):
    found = run("Please let us know. cloud: FR is down, in US cloud too; the us cloud? DE is German.", index)
    assert sorted(kinds(found, "cloud")) == ["FR", "US"]


def test_no_false_matches(index):
    body = ("See ANALY_FZK_SHORTER and XANALY_FZK and ANALY_MWT2_UCORE2 and http://dcache.mwt2.org/x "
            "and admin@mwt2.\nPlease let us know, call me on 0123456789 or 5551234567 tomorrow. "
            "We processed 1500 files in 12345678 ms.")
    found = run(body, index)
    assert found == [], found


def test_name_inside_longer_name_matches_only_the_longer_one(index):
    found = run("ANALY_FZK_SHORT fails, MWT2_DATADISK is full", index)
    assert kinds(found, "queue") == ["ANALY_FZK_SHORT"]
    assert kinds(found, "endpoint") == ["MWT2_DATADISK"] and kinds(found, "site") == []


@pytest.mark.parametrize("body", [
    "My jobs run fine at ANALY_FZK but fail at ANALY_BNL_LONG.",
    "It works at ANALY_FZK; ANALY_BNL_LONG fails.",
    "ANALY_FZK is OK, ANALY_BNL_LONG fails.",
    "I excluded ANALY_FZK and then ANALY_BNL_LONG failed.",
    "Everything fails except ANALY_FZK. See ANALY_BNL_LONG",
    "prun --excludedSite=ANALY_MWT2_UCORE,ANALY_FZK --site ANALY_BNL_LONG",
    "prun --excludedSite ANALY_FZK --site ANALY_BNL_LONG",
    "fzk works, ANALY_BNL_LONG gives errors",
])
def test_non_complaints(index, body):
    found = run(body, index)
    assert not [m for m in found if m.queue == "ANALY_FZK" and m.complaint], found
    assert one(found, "queue", "ANALY_BNL_LONG").complaint


@pytest.mark.parametrize("body", [
    "It doesn't work at ANALY_FZK.",
    "ANALY_FZK is not OK.",
    "Jobs no longer run fine at ANALY_FZK",
    "ANALY_FZK fails with stage-in errors.",
])
def test_negated_or_plain_mentions_stay_complaints(index, body):
    assert one(run(body, index), "queue").complaint


def test_complaint_wins_unless_every_occurrence_is_fine(index):
    found = run("ANALY_FZK is fine.\nLater: jobs at ANALY_FZK crash.", index)
    assert one(found, "queue", "ANALY_FZK").complaint
    found = run("ANALY_FZK is fine.\nIt runs fine at ANALY_FZK.", index)
    assert not one(found, "queue", "ANALY_FZK").complaint


def test_panda_and_task_ids(index):
    body = ("Failed job: https://bigpanda.cern.ch/job?pandaid=6123456789\n"
            "also https://bigpanda.cern.ch/jobs/?pandaid=6123456790&x=1 and PanDA ID 6123456791\n"
            "task https://bigpanda.cern.ch/tasks/?jeditaskid=38123456 and /task/38123457/ and my task 38123458\n")
    found = run(body, index)
    assert kinds(found, "panda_id") == ["6123456789", "6123456790", "6123456791"]
    assert kinds(found, "task_id") == ["38123456", "38123457", "38123458"]


def test_pilot_error_codes(index):
    found = run("pilotErrorCode=1099, error codes 1098, 1333; see NOLOCALSPACE; 1500 jobs ran; pilot error 1999",
                index)
    codes = {m.code: m for m in found if m.kind == "error_code"}
    assert set(codes) == {1098, 1099, 1333, 1999}
    assert codes[1099].error_class.name == "STAGEINFAILED" and codes[1099].error_class.klass == "site"
    assert codes[1999].error_class is None


@pytest.mark.parametrize("body, code", [
    ("Job failed: No space left on device at stage-in", 1098),
    ("Put error: copy to MWT2_DATADISK failed: No space left on device", 1333),
    ("stage-out of the output failed\n    cp: No space left on device", 1333),
    ("No space left on device", 1098),
    ("connect: Network is unreachable", 1327),
    ("Rucio: service is not available at the moment", 1324),
    ("Run: [ERROR] Server responded with an error: [3010]", 1362),
    ("ERROR: CVMFS is not alive on the worker", 1377),
    ("apptainer: failed to mount the image", 1306),
    ("stagein failed after 3 attempts", 1099),
    ("stage-in timed out", 1151),
])
def test_error_text_maps_to_pilot_code(index, body, code):
    texts = [m for m in run(body, index) if m.kind == "error_text"]
    assert code in [m.code for m in texts], texts


def test_error_text_without_code(index):
    found = run("Get error: lfc_creatg failed; Copy command returned error code 256", index)
    texts = {m.value: m.code for m in found if m.kind == "error_text"}
    assert texts == {"Get error:": 1099, "lfc_creatg failed": None, "Copy command returned error code 256": None}


def test_untrusted_and_huge_bodies(index):
    found = run("{{7*7}} <script>ANALY_FZK</script> \x00\x1b[31m" + "x " * (MAX_SCAN_CHARS // 2)
                + " ANALY_BNL_LONG", index)
    assert kinds(found, "queue") == ["ANALY_FZK"]  # the tail past the scan limit is not read
    assert "\x00" not in found[0].snippet and "\x1b" not in found[0].snippet


TYPICAL_BODY = """Dear DAST,

since yesterday evening most of my jobs at ANALY_MWT2_UCORE fail during stage-in, while the same
task ran fine at ANALY_FZK last week. An example is
https://bigpanda.cern.ch/job?pandaid=6123456789 from https://bigpanda.cern.ch/tasks/?jeditaskid=38123456

The pilot log says:
  2024-05-02 10:11:12 | copytool_in | Get error: No space left on device
  2024-05-02 10:11:13 | pilot | pilotErrorCode=1098 (NOLOCALSPACE)
  2024-05-02 10:11:14 | pilot | [ERROR] Server responded with an error: [3010] Unable to open file

I submitted with prun --exec "python run.py %IN" --inDS user.someone.data.v1 --outDS user.someone.out.v2
--nFilesPerJob 5 --excludedSite ANALY_BNL_LONG and the usual options. The input dataset is on
MWT2_DATADISK and should be complete; I checked with rucio list-file-replicas yesterday and all five
replicas were listed as available. I also tried to resubmit the failed jobs twice with pbook, but the
retries failed in the same way after about twenty minutes each, which makes me think something is
wrong with the storage or the scratch disks of the worker nodes rather than with my code.

Could you please have a look and let us know what we should do? This is blocking an analysis for
the summer conferences, so any help is appreciated.

Best regards,
Some One
--
Some One, University of Somewhere, Physics Department, Room 123, Phone +1 555 123 4567

On Monday, DAST wrote:
> Dear Some One, thank you for the report. Could you please send us a link to one of the failed
> jobs and tell us which options you used for the submission? Please also check whether the
> problem persists when you resubmit, and whether the input dataset is complete. If the problem
> is with the site, we will open a GGUS ticket for the site administrators; if it is with the
> data, we will ask the data management team to have a look. Best regards, the DAST shifter
"""



def test_pandaid_zero_is_no_job(index):
    """prun prints pandaid=0 when nothing was submitted: that names no job."""
    assert kinds(run("prun submits but the monitor shows nothing: pandaid=0", index), "panda_id") == []
    assert kinds(run("see https://bigpanda.cern.ch/job?pandaid=6412345678", index), "panda_id") == ["6412345678"]
