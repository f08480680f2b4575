/*
 * mm-journal.h - the local, append-only journal of metadata documents that
 * could not be committed to PostgreSQL in time.
 *
 * A message is accepted only after its document is either committed or
 * appended here and fsync'ed, so no accepted message loses its record.
 * Replay hands the documents back, oldest first, and removes a segment only
 * after all of it was recorded; recording is idempotent by mailmeta_id, so a
 * crash during replay at worst records a document twice into one row.
 */
#ifndef MM_JOURNAL_H
#define MM_JOURNAL_H

#include "mm-writer.h"

struct mm_journal;

/* Opens (creating) DIR; NULL with ERR filled (caller frees) on failure. */
struct mm_journal *mm_journal_open(const char *dir, char **err);
/* Appends DOC as one line and makes it durable; 0 or -1. */
int mm_journal_append(struct mm_journal *j, const char *doc);
/* Replays every sealed document through RECORD; stops at the first
 * MM_WRITE_UNAVAILABLE.  Documents the database rejects go to
 * DIR/rejected.jsonl.  Returns the number of documents still waiting. */
typedef enum mm_write_result (*mm_journal_record_fn)(const char *doc, void *ctx);
unsigned long mm_journal_replay(struct mm_journal *j, mm_journal_record_fn record,
				void *ctx);
void mm_journal_close(struct mm_journal **j);

#endif
