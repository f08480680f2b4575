#!/usr/bin/env python3
"""test-corpus.py - compare the extractor with reference answers of public corpora

The corpora (real and torture-test messages from public parser projects)
come with reference.jsonl: what CPython's email package extracts from each
message.  For every record Python itself is sure about ("strict": true) this
compares message_id, subject, from/to/cc, date, in_reply_to, references, the
MIME parts (number, type, disposition, file name) and the attachments (file
name, type, and size + SHA-256 after LF -> CRLF conversion, as the milter
sees mail) with what mm-extract-dump prints, and reports agreement per
field.  Each known disagreement is listed in EXCEPTIONS with the reason the
extractor, not Python, follows the RFCs; any other disagreement fails the
test.  Every other message and every file in INDEX.tsv is run through the
extractor too, which must print a complete record for each.

Environment: MAILMETA_CORPORA (default: $top_srcdir/../shared/corpora; the
test is skipped with status 77 when it does not exist), MM_EXTRACT_DUMP
(default: $top_builddir/libmailmeta/mm-extract-dump).
"""
import csv, json, os, subprocess, sys

SKIP = 77
FIELDS = ('message_id', 'subject', 'from', 'to', 'cc', 'date', 'in_reply_to',
          'references', 'parts', 'attachments')
KEYS = ('size_bytes', 'malformed', 'malformed_reasons', 'headers', 'parts', 'attachments')

# (path, field) -> why the extractor's answer is the right one.
# Each is a disagreement where Python does not follow the RFCs, or where the
# extractor deliberately says more.  The first group depends on GMime alone.
_TOP_PARTIAL = ('parts', 'a top-level message/partial body is section "1" in IMAP '
                '(RFC 3501 6.4.5); Python calls it "TEXT"')
EXCEPTIONS = {
    ('mail-gem/spec/fixtures/emails/error_emails/bad_subject.eml', 'subject'):
        # Adjacent base64 encoded-words in one charset: GMime joins their
        # payloads before decoding (to mend characters split between words),
        # and padding ("=") inside the joined text ends the decoding, so
        # "MySurvey" + "91123105" survive of the subject.  RFC 2047 6.2 has
        # each word decoded on its own, as Python does: a GMime limitation,
        # not worth a hand-written RFC 2047 decoder.
        'GMime joins padded base64 encoded-words',
    ('mail-gem/spec/fixtures/emails/error_emails/invalid_subject_characters.eml', 'subject'):
        # Raw ISO-8859-1 in Subject (no encoded-word): the extractor decodes
        # undeclared 8-bit text as UTF-8, else windows-1252, giving "Formação";
        # Python gives U+FFFD for every 8-bit byte.  Both flag it malformed.
        'raw 8-bit header decoded with a fallback charset',
    ('mail-gem/spec/fixtures/emails/error_emails/missing_content_disposition.eml', 'parts'):
        # "Content-Disposition:" with an empty value: the record has null
        # (no disposition), Python the empty string.
        'empty Content-Disposition is null',
    ('mail-gem/spec/fixtures/emails/error_emails/multiple_content_types.eml', 'parts'):
        # Two Content-Type fields in the top-level header (RFC 2045 allows
        # one): GMime uses the last (text/plain), Python the first
        # (multipart/alternative).  Neither is wrong; the record is flagged
        # malformed ("conflicting headers").
        'two Content-Type headers',
    ('mimekit/UnitTests/TestData/partial/message-partial.0.eml', 'parts'): _TOP_PARTIAL,
    ('mimekit/UnitTests/TestData/partial/message-partial.1.eml', 'parts'): _TOP_PARTIAL,
    ('mimekit/UnitTests/TestData/partial/message-partial.2.eml', 'parts'): _TOP_PARTIAL,
    ('mimekit/UnitTests/TestData/partial/rfc2046.0.eml', 'parts'): _TOP_PARTIAL,
    ('mimekit/UnitTests/TestData/partial/rfc2046.1.eml', 'parts'): _TOP_PARTIAL,
}


def dump(tool, path, crlf):
    args = [tool] + (['--crlf'] if crlf else []) + [path]
    out = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    if out.returncode != 0:
        raise RuntimeError('%s exited %d: %s' % (path, out.returncode, out.stderr[-500:]))
    doc = json.loads(out.stdout)
    missing = [k for k in KEYS if k not in doc]
    if missing:
        raise RuntimeError('%s: record lacks %s' % (path, missing))
    return doc


def addrs(lst):
    return [(a['address'] or '').lower() for a in lst]


def ours(doc):
    h = doc['headers']
    return {
        'message_id': h['message_id'], 'subject': h['subject'],
        'from': addrs(h['from']), 'to': addrs(h['to']), 'cc': addrs(h['cc']),
        'date': h['date'], 'in_reply_to': h['in_reply_to'], 'references': h['references'],
        'parts': [(p['part'], p['content_type'], p['disposition'], p['filename'])
                  for p in doc['parts']],
        'attachments': [(a['part'], a['filename'], a['content_type'], a['size_bytes'], a['sha256'])
                        for a in doc['attachments']],
    }


def theirs(ref):
    r = {f: ref[f] for f in FIELDS if f not in ('parts', 'attachments')}
    r['parts'] = [(p['part'], p['content_type'], p['disposition'], p['filename'])
                  for p in ref['parts']]
    r['attachments'] = [(a['part'], a['filename'], a['content_type'], a['size_crlf'],
                         a['sha256_crlf']) for a in ref['attachments']]
    return r


def main():
    top = os.environ.get('top_srcdir', '.')
    corpora = os.environ.get('MAILMETA_CORPORA') or os.path.join(top, '..', 'shared', 'corpora')
    tool = os.environ.get('MM_EXTRACT_DUMP') or os.path.join(
        os.environ.get('top_builddir', '.'), 'libmailmeta', 'mm-extract-dump')
    ref_path = os.path.join(corpora, 'reference.jsonl')
    if not os.path.exists(ref_path):
        print('SKIP: no corpora at %s (set MAILMETA_CORPORA)' % corpora)
        return SKIP
    verbose = '-v' in sys.argv
    agree = {f: 0 for f in FIELDS}
    excused = {f: 0 for f in FIELDS}
    failures, strict, others, seen = [], 0, 0, set()
    for line in open(ref_path, encoding='utf-8'):
        ref = json.loads(line)
        path = os.path.join(corpora, ref['path'])
        seen.add(ref['path'])
        doc = dump(tool, path, crlf=True)
        if not ref['strict']:
            others += 1
            continue
        strict += 1
        mine, want = ours(doc), theirs(ref)
        for f in FIELDS:
            if mine[f] == want[f]:
                agree[f] += 1
            elif (ref['path'], f) in EXCEPTIONS:
                excused[f] += 1
            else:
                failures.append('%s %s:\n   ours:   %r\n   python: %r' % (ref['path'], f, mine[f], want[f]))
    extra = 0
    for row in csv.DictReader(open(os.path.join(corpora, 'INDEX.tsv'), encoding='utf-8'), delimiter='\t'):
        for crlf in (False, True):
            dump(tool, os.path.join(corpora, row['path']), crlf)
        extra += 1
    print('strict records: %d; per field: agree / explained exception / differ' % strict)
    for f in FIELDS:
        differ = strict - agree[f] - excused[f]
        print('  %-12s %4d / %3d / %3d' % (f, agree[f], excused[f], differ))
    print('also parsed without error: %d non-strict records, %d INDEX.tsv files (LF and CRLF)'
          % (others, extra))
    for fl in failures if verbose else failures[:40]:
        print('DIFF ' + fl)
    unused = [k for k in EXCEPTIONS if k[0] not in seen]
    if unused:
        print('exceptions for unknown paths: %r' % unused)
    return 1 if failures or unused else 0


if __name__ == '__main__':
    sys.exit(main())
