"""Real and torture-test messages from the public corpora, sent through
Postfix's MX port, are recorded with the values CPython's email package
extracts from the same files (reference.jsonl, produced independently).

Compared for every message Python is sure about ("strict"): Message-ID,
decoded Subject, From/To/Cc addresses, Date, In-Reply-To, References, the
MIME parts and every attachment's file name, type, decoded size and SHA-256
(of the CRLF form, as SMTP carries it).  Known disagreements are the ones
the extraction library's own corpus test explains (libmailmeta/test-corpus.py
EXCEPTIONS); any other fails.
"""

import concurrent.futures
import importlib.util
import json
import os
import smtplib
import time
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.join(HERE, "..", "..")
CORPORA = os.environ.get("MAILMETA_CORPORA") or os.path.join(TOP, "..", "shared", "corpora")


def library_exceptions():
    spec = importlib.util.spec_from_file_location(
        "test_corpus", os.path.join(TOP, "libmailmeta", "test-corpus.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EXCEPTIONS


def strict_records():
    path = os.path.join(CORPORA, "reference.jsonl")
    if not os.path.exists(path):
        pytest.skip(f"no corpora at {CORPORA} (set MAILMETA_CORPORA)")
    with open(path, encoding="utf-8") as f:
        return [r for r in map(json.loads, f) if r["strict"]]


# mail.record_message keeps the first 10 In-Reply-To ids and the first plus
# the last 19 References ids (README: hostile input is capped).
def capped_references(ids):
    return ids if len(ids) <= 20 else ids[:1] + ids[-19:]


def expected(ref):
    return {
        "message_id": ref["message_id"],
        "subject": ref["subject"],
        "from": ref["from"], "to": ref["to"], "cc": ref["cc"],
        "date": ref["date"],
        "in_reply_to": ref["in_reply_to"][:10],
        "references": capped_references(ref["references"]),
        "parts": [[p["part"], p["content_type"], p["disposition"], p["filename"]]
                  for p in ref["parts"]],
        "attachments": [[a["part"], a["filename"], a["content_type"],
                         a["size_crlf"], a["sha256_crlf"]] for a in ref["attachments"]],
    }


RECORD_SQL = """
SELECT json_build_object(
  'message_id', m.message_id,
  'subject', m.subject,
  'from', (SELECT coalesce(json_agg(lower(a->>'address')), '[]') FROM jsonb_array_elements(m.addresses->'from') a),
  'to', (SELECT coalesce(json_agg(lower(a->>'address')), '[]') FROM jsonb_array_elements(m.addresses->'to') a),
  'cc', (SELECT coalesce(json_agg(lower(a->>'address')), '[]') FROM jsonb_array_elements(m.addresses->'cc') a),
  'date', to_char(m.sent_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
  'in_reply_to', m.in_reply_to,
  'references', m.reference_ids,
  'parts', (SELECT coalesce(json_agg(json_build_array(p->>'part', p->>'content_type',
                                                      p->>'disposition', p->>'filename')), '[]')
              FROM jsonb_array_elements(m.parts) p),
  'attachments', (SELECT coalesce(json_agg(json_build_array(a.part, a.filename, a.content_type,
                                                            a.size_bytes, a.sha256) ORDER BY a.part), '[]')
                    FROM mail.message_attachments a WHERE a.mailmeta_id = m.mailmeta_id))
  FROM mail.messages m WHERE m.env_from = %s
"""


def send(stack, rcpt, sender, path):
    with open(path, "rb") as f:
        raw = f.read()
    # SMTP carries CRLF lines; smtplib sends bytes as they are.
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    with stack.smtp() as s:
        s.sendmail(sender, [rcpt], raw)


def test_corpus_through_postfix_matches_the_reference(stack, directory):
    records = strict_records()
    exceptions = library_exceptions()
    tag = uuid.uuid4().hex[:8]
    senders = {r["path"]: f"corpus-{i}-{tag}@outside.example" for i, r in enumerate(records)}

    refused = {}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = {pool.submit(send, stack, directory.bob, senders[r["path"]],
                               os.path.join(CORPORA, r["path"])): r["path"] for r in records}
        for fut in concurrent.futures.as_completed(futures):
            try:
                fut.result()
            except smtplib.SMTPException as e:
                refused[futures[fut]] = repr(e)
    assert not refused, f"Postfix refused corpus messages: {refused}"

    deadline = time.monotonic() + 60
    mismatches, agreed = [], 0
    for r in records:
        while True:
            rows = stack.sql(RECORD_SQL, senders[r["path"]])
            if rows or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(rows) == 1, f"{r['path']}: {len(rows)} records"
        got, want = json.loads(rows[0][0]), expected(r)
        for field, value in want.items():
            if got[field] == value:
                agreed += 1
            elif (r["path"], field) not in exceptions:
                mismatches.append(f"{r['path']} {field}:\n  recorded: {got[field]!r}\n"
                                  f"  python:   {value!r}")
    print(f"{len(records)} messages, {agreed} field values agree, "
          f"{len(mismatches)} disagree")
    assert not mismatches, "\n".join(mismatches[:20])
