/*
 * mm-milter.h - the libmilter side of mailmeta-milter: registration and
 * the per-connection callbacks.  Everything else (documents, database,
 * journal) is reached through plain interfaces without libmilter types.
 */
#ifndef MM_MILTER_H
#define MM_MILTER_H

#include "mm-config.h"
#include "mm-journal.h"
#include "mm-policy.h"
#include "mm-writer.h"

/* Installs the callbacks; the objects must outlive smfi_main(). */
int mm_milter_register(struct mm_writer *writer, struct mm_journal *journal,
		       struct mm_policy *policy);	/* policy may be NULL */
/* Replaces the settings used by new messages (takes ownership). */
void mm_milter_set_config(struct mm_config *cfg);
/* Messages at their end being committed or journaled: a stop waits for
 * them.  (Sessions still sending are dropped by libmilter when it stops,
 * and Postfix defers those messages.) */
unsigned mm_milter_storing_messages(void);
/* From now on messages at their end are deferred (451 4.3.2), not stored. */
void mm_milter_stop_storing(void);

#endif
