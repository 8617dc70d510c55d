"""A deterministic sample support archive (mbox, Gmail-export style) for demos and tests.

Threads name the embedded grid's queues, sites and storage (configs/grid.yaml): broken sites
(stage-in errors, full disks, CVMFS), user-code problems, "works at X but fails at Y", PanDA job and
task links, replies with In-Reply-To/References (a few with truncated References), HTML-only mails,
a GGUS-forwarded ticket and one hostile subject.
"""
from __future__ import annotations

import mailbox
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

SUPPORT = "atlas-support@example.org"
TAG = "[atlas-support] "

# (subject, user, labels, [(who, body) ...]); who: "u" user, "s" support, "h" user HTML-only,
# "S" support reply whose References were truncated (only the subject links it).
THREADS: list[tuple[str, str, str, list[tuple[str, str]]]] = [
    ("Jobs fail at ANALY_MWT2_UCORE with stage-in error", "alice.m@cern.ch",
     "Status/ACTIVE,Category/Site Problem",
     [("u", "Hi,\nall my jobs at ANALY_MWT2_UCORE fail with\n  Get error: Failed to stage in "
            "file from MWT2_DATADISK: xrootd error 3010\nThe same task runs fine at ANALY_FZK.\n"
            "Example: https://bigpanda.cern.ch/job?pandaid=6412345678\nCheers, Alice"),
      ("s", "Hello Alice,\nthanks, we see many stage-in failures at MWT2 today. We contacted the "
            "site admins.\n> all my jobs at ANALY_MWT2_UCORE fail with\nBest, shifter"),
      ("u", "Still failing this morning, task https://bigpanda.cern.ch/tasks/?jeditaskid=31234567")]),
    ("No space left on device at ANALY_FZK", "bernd.k@kit.edu", "Status/ACTIVE,Category/Site Problem",
     [("u", "My jobs at ANALY_FZK die with 'No space left on device' when writing the output.\n"
            "https://bigpanda.cern.ch/job?pandaid=6412000011"),
      ("s", "The scratch disk of some FZK-LCG2 worker nodes is full; please exclude ANALY_FZK for "
            "now (--excludedSite=ANALY_FZK).")]),
    ("CVMFS not available on ANALY_BNL_SHORT nodes", "carol.t@bnl.gov",
     "Status/WAITING,Category/Site Problem",
     [("u", "setupATLAS fails: /cvmfs/atlas.cern.ch: Transport endpoint is not connected.\n"
            "Seen at ANALY_BNL_SHORT, jobs at ANALY_BNL_LONG are fine."),
      ("s", "BNL-ATLAS fixed the CVMFS mount on the affected nodes. Could you retry and tell us?")]),
    ("my code crashes with ZeroDivisionError", "dave.p@uni-bonn.de", "Category/User code problem",
     [("u", "Traceback (most recent call last):\n  File \"ana.py\", line 42, in <module>\n"
            "    eff = npass / ntotal\nZeroDivisionError: division by zero\n"
            "It happens at every site, e.g. ANALY_IN2P3-CC and ANALY_RAL_SL7."),
      ("s", "This is a problem in your code: ntotal is zero when a file has no events passing your "
            "preselection. Please protect the division."),
      ("u", "Thanks, that was it.")]),
    ("Seg faults in StreamAOD", "erin.w@ox.ac.uk", "Status/ACTIVE,Category/User code problem",
     [("u", "My athena job segfaults (signal 11) in StreamAOD, see "
            "https://bigpanda.cern.ch/job?pandaid=6413000001 at ANALY_RAL_SL7. Runs fine locally."),
      ("s", "Please send the command you ran and the release you use."),
      ("u", "prun --exec 'athena MyJobOptions.py' --outDS user.erin.test1 "
            "--inDS mc23_13p6TeV.601189.PhPy8EG_Zmumu.deriv.DAOD_PHYS.e8514_s4162_r14622_p6026")]),
    ("Put error: Copy command returned error code 256", "frank.l@desy.de",
     "Status/ACTIVE,Category/Site Problem",
     [("u", "pilot: Put error: Copy command returned error code 256 at ANALY_DESY-HH when "
            "writing to DESY-HH_DATADISK. jeditaskid=31234890"),
      ("S", "DESY-HH reports a broken storage pool, being fixed."),
      ("u", "Works again, thanks!")]),
    ("Job stuck at 69% for 3 days", "gina.r@infn.it", "Status/WAITING",
     [("u", "My task 31240001 is stuck at 69% for 3 days, remaining jobs are at ANALY_LRZ."),
      ("s", "The remaining jobs wait for input staging at LRZ-LMU_DATADISK; they will run. "
            "Please tell us if they are still stuck tomorrow.")]),
    ("Status check failed at ANALY_GRIF-LAL, aborted jobs", "hugo.b@ijclab.in2p3.fr",
     "Status/ACTIVE,Category/Site Problem",
     [("h", "<html><body><p>Hello,</p><p>jobs at <b>ANALY_GRIF-LAL</b> are aborted with "
            "&quot;Status check failed&quot;.</p><p>Example: <a href=\"https://bigpanda.cern.ch/"
            "job?pandaid=6414000123\">6414000123</a></p><script>track()</script></body></html>"),
      ("s", "GRIF is in downtime until tomorrow, see the GOCDB. Your jobs will be retried.")]),
    ("doSetup failed with JEDITemporaryError", "ivan.s@jinr.ru", "Category/JEDI,Status/CLOSED",
     [("u", "My submission fails with doSetup failed with JEDITemporaryError. Task 31250000."),
      ("s", "Temporary JEDI problem, the task was retried automatically.")]),
    ("max walltime error at ANALY_AGLT2", "julia.n@umich.edu", "Status/ACTIVE",
     [("u", "All my jobs at ANALY_AGLT2 get 'max walltime exceeded' after 24h."),
      ("s", "Your jobs process 50 files each; please use --nFilesPerJob=5."),
      ("u", "With smaller jobs it runs fine at ANALY_AGLT2, but at ANALY_MWT2_UCORE they still fail "
            "with Get error: file not found on MWT2_DATADISK")]),
    ("Input files missing at BNL-OSG2_DATADISK", "kevin.o@bnl.gov", "Status/ACTIVE,Category/DDM",
     [("u", "Get error: Replica not found for files of data23_13p6TeV.00456749 on "
            "BNL-OSG2_DATADISK, jobs at ANALY_BNL_LONG fail."),
      ("s", "The replicas were declared bad and are being recovered by Rucio."),
      ("u", "Thanks. Meanwhile I excluded ANALY_BNL_LONG.")]),
    ("GGUS-Ticket-ID: #165432 ATLAS: transfers failing to FZK-LCG2_DATADISK", "ggus@ggus.example",
     "Status/ACTIVE,Escalated/GGUS,Category/Site Problem",
     [("u", "GGUS ticket 165432 has been updated.\nSite: FZK-LCG2\nTransfers to "
            "FZK-LCG2_DATADISK fail: No space left on device.\n"
            "https://helpdesk.ggus.example/#ticket/zoom/165432"),
      ("s", "Forwarded to the DE cloud squad."),
      ("u", "GGUS ticket 165432: the site added space, please verify.")]),
    ("Grid jobs fail at all UK sites", "lena.h@ed.ac.uk", "Status/WAITING,Category/User setup",
     [("u", "Jobs at ANALY_MANC and ANALY_RAL_SL7 fail right at start: 'voms-proxy not valid'."),
      ("s", "Your proxy expired. Please run voms-proxy-init -voms atlas and resubmit.")]),
    ("<script>alert(1)</script> jobs broken", "mallory@evil.example", "",
     [("u", "<script>alert(1)</script> see subject"),
      ("s", "Please send a link to a failing job and the command you ran.")]),
    ("unknown crash on grid", "nina.v@cern.ch", "Status/ACTIVE",
     [("u", "My job crashes without a message, it was scheduled to run at ANALY_IN2P3-CC.\n"
            "https://bigpanda.cern.ch/job?pandaid=6415000042"),
      ("s", "The log shows std::bad_alloc: your job uses 6 GB of memory; please request more "
            "memory or reduce it."),
      ("u", "Thanks, reducing the histogram binning fixed it.")]),
    ("Very slow stage-in at ANALY_DESY-HH", "oscar.z@desy.de", "Category/Site Problem",
     [("h", "<div>Stage-in at ANALY_DESY-HH takes 2&nbsp;hours per file, at ANALY_FZK it takes "
            "minutes.</div><style>div{color:red}</style>"),
      ("s", "We see no problem at DESY-HH now, could you send a job link?"),
      ("u", "https://bigpanda.cern.ch/job?pandaid=6416000077")]),
    ("Output dataset not replicated", "paula.c@cern.ch", "Category/Rucio",
     [("u", "My output dataset user.paula.test2 is not replicated to my LOCALGROUPDISK."),
      ("s", "The replication rule was created but is stuck; we asked the DDM experts.")]),
    ("prun fails with 'pandaid=0'", "quentin.d@lapp.in2p3.fr", "Status/WAITING",
     [("u", "prun submits but the monitor shows nothing: pandaid=0"),
      ("s", "Please update panda-client to the latest version and retry.")]),
    ("ANALY_RAL_SL7 jobs killed by batch system", "rachel.e@stfc.ac.uk",
     "Status/ACTIVE,Category/Site Problem",
     [("u", "Jobs killed by the batch system at ANALY_RAL_SL7 after 10 min: 'Job was evicted'."),
      ("s", "RAL-LCG2 drained some worker nodes for an intervention, it is finished now."),
      ("u", "Jobs run fine again at ANALY_RAL_SL7.")]),
    ("Problem reading DAOD_PHYS at ANALY_LRZ", "stefan.m@lmu.de", "Category/Site Problem",
     [("u", "xrootd error: [FATAL] Socket timeout reading from LRZ-LMU_DATADISK at ANALY_LRZ"),
      ("S", "LRZ-LMU had a network problem this night, fixed now.")]),
    ("KeyError in my analysis", "tom.b@uni-mainz.de", "Category/User code problem",
     [("u", "My code crashes with KeyError: 'jet_pt' at ANALY_FZK and ANALY_MWT2_UCORE and also "
            "locally."),
      ("s", "The branch is called AnalysisJetsAuxDyn.pt in DAOD_PHYS; this is a user code "
            "problem.")]),
    ("Task 31260000 broken off", "ursula.k@cern.ch", "Closed",
     [("u", "jeditaskid=31260000 was broken off, why?"),
      ("s", "The input dataset is empty. Closing."),
      ("u", "But the dataset has 5 files, see rucio list-files.")]),
    ("Fwd: AGLT2 jobs fail with lfc_creatg failed", "victor.a@umich.edu", "Status/URGENT",
     [("u", "---------- Forwarded message ----------\nANALY_AGLT2: lfc_creatg failed for all "
            "jobs of my task 31270000"),
      ("s", "The site was notified.")]),
    ("Jobs at ANALY_IN2P3-CC fail, other FR sites OK", "wendy.f@lpnhe.in2p3.fr",
     "Status/ACTIVE,Category/Site Problem",
     [("u", "Get error: Connection refused from IN2P3-CC_DATADISK; ANALY_GRIF-LAL runs fine."),
      ("s", "IN2P3-CC storage door was restarted, please retry."),
      ("u", "Works now.")]),
    ("Segmentation violation after release upgrade", "xavier.g@ific.uv.es",
     "Category/User code problem",
     [("u", "After moving to the new release I get *** Break *** segmentation violation at every "
            "site (ANALY_BNL_LONG, ANALY_FZK, ANALY_MANC)."),
      ("s", "Please recompile your package against the new release.")]),
]


def _make(subject: str, sender: str, to: str, date: datetime, msgid: str, body: str, html: bool,
          labels: str, thrid: str, in_reply_to: str | None, references: list[str]) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = f"<{msgid}>"
    if in_reply_to:
        msg["In-Reply-To"] = f"<{in_reply_to}>"
    if references:
        msg["References"] = " ".join(f"<{r}>" for r in references)
    if labels:
        msg["X-Gmail-Labels"] = labels
    if thrid:
        msg["X-GM-THRID"] = thrid
    if html:
        msg.set_content(body, subtype="html")
    else:
        msg.set_content(body)
    return msg


def write_sample_mbox(path, now: datetime) -> int:
    """Write the sample archive to `path` (replacing it); returns the number of messages."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    path = Path(path)
    if path.exists():
        path.unlink()
    box = mailbox.mbox(str(path), create=True)
    count = 0
    try:
        box.lock()
        start = now - timedelta(hours=71)
        for t, (subject, user, labels, posts) in enumerate(THREADS):
            first = start + timedelta(hours=2.5 * t, minutes=7 * t % 50)
            # half the threads carry a Gmail thread id; the rest thread by References or subject
            thrid = str(1790000000000000000 + t * 7919) if t % 2 == 0 else ""
            ids: list[str] = []
            for i, (who, body) in enumerate(posts):
                support = who in "sS"
                date = first + timedelta(hours=1.5 * i, minutes=(11 * i + 3 * t) % 40)
                msgid = f"t{t:02d}.m{i}.{int(start.timestamp())}@sample.example"
                if i == 0:
                    subj = TAG + subject
                else:
                    subj = "Re: " + TAG + subject
                refs = [] if who == "S" else list(ids)
                in_reply_to = None if who == "S" or not ids else ids[-1]
                sender = f"ATLAS support <{SUPPORT}>" if support else user
                msg = _make(subj, sender, user if support else SUPPORT, date, msgid, body,
                            who == "h", labels, thrid, in_reply_to, refs)
                mbox_msg = mailbox.mboxMessage(msg)
                mbox_msg.set_from(SUPPORT if support else user, date.timetuple())
                box.add(mbox_msg)
                ids.append(msgid)
                count += 1
        box.flush()
    finally:
        box.unlock()
        box.close()
    return count


def demo_threads(broken: str, healthy: str, broken_from: datetime, healthy_from: datetime,
                 end: datetime) -> list[EmailMessage]:
    """Two short threads dated inside a demo's run: one about its broken queue, written between
    `broken_from` and `end`, and one about a healthy queue where the user's own code fails, written
    between `healthy_from` and `end`. Replies come from the support desk. Times are rounded up to the
    second (a mail's Date has no fractions), so a thread is never dated before its `..._from`."""

    def at(start: datetime, share: float) -> datetime:
        when = start + (end - start) * share
        return when.replace(microsecond=0) + timedelta(seconds=1) if when.microsecond else when

    stamp = int(broken_from.timestamp())
    threads = [
        (f"Jobs at {broken} fail with stage-in errors", "alice.m@cern.ch", "Status/ACTIVE",
         [("u", f"Hi,\nsince a few minutes every job of my task at {broken} fails with\n"
                "  Get error: Failed to stage in file: Connection timed out\n"
                "Could you have a look?\nCheers, Alice", 0.85),
          ("s", "Thanks Alice, we are looking at it.", 0.95)], broken_from),
        (f"my jobs crash at {healthy}", "tom.b@uni-mainz.de", "Status/ACTIVE",
         [("u", f"My jobs at {healthy} crash right away:\n  File \"ana.py\", line 12, in <module>\n"
                "    pt = event['jet_pt']\nKeyError: 'jet_pt'\nIs something wrong with the site?", 0.9),
          ("s", "Please send the command you ran and a link to a failing job.", 0.97)], healthy_from),
    ]
    messages = []
    for t, (subject, user, labels, posts, start) in enumerate(threads):
        ids: list[str] = []
        for i, (who, body, share) in enumerate(posts):
            msgid = f"demo{t}.m{i}.{stamp}@sample.example"
            support = who == "s"
            messages.append(_make(("Re: " if i else "") + TAG + subject,
                                  f"ATLAS support <{SUPPORT}>" if support else user,
                                  user if support else SUPPORT, at(start, share), msgid, body, False, labels, "",
                                  ids[-1] if ids else None, list(ids)))
            ids.append(msgid)
    return messages


def write_messages(path, messages: list[EmailMessage]) -> int:
    """Write messages to an mbox at `path` (replacing it)."""
    path = Path(path)
    if path.exists():
        path.unlink()
    box = mailbox.mbox(str(path), create=True)
    try:
        box.lock()
        for msg in messages:
            box.add(mailbox.mboxMessage(msg))
        box.flush()
    finally:
        box.unlock()
        box.close()
    return len(messages)


if __name__ == "__main__":  # python robot/tickets/sample.py FILE
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python robot/tickets/sample.py FILE (or: healthrobot tickets sample FILE)")
    written = write_sample_mbox(sys.argv[1], datetime.now(timezone.utc))
    print(f"wrote {written} messages to {sys.argv[1]}")
