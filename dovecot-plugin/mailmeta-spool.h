/*
 * mailmeta-spool.h - names of the dirty-user markers in mailmeta_spool_dir
 *
 * The mail plugin marks a user dirty by creating <spool>/<name>, where
 * <name> is the user name percent-encoded; `doveadm mailmeta watch` turns
 * the name back into the user.  Both plugins share this code so the two
 * sides cannot disagree.  Letters, digits and "@._+-" stay as they are
 * (a leading "." is encoded), every other byte becomes %XX: a name is never
 * empty, never contains "/", and never starts with ".", which leaves the
 * dot names (".claimed/") to the watcher.  Plain C: no Dovecot headers.
 */
#ifndef MAILMETA_SPOOL_H
#define MAILMETA_SPOOL_H

#include <stdbool.h>
#include <stddef.h>

/* Where the watcher keeps the markers it has claimed while it syncs. */
#define MAILMETA_SPOOL_CLAIM_DIR ".claimed"

/* Longest marker name (a file name: NAME_MAX), and a buffer that holds
   one with its NUL. */
#define MAILMETA_SPOOL_NAME_MAX 255
#define MAILMETA_SPOOL_NAME_SIZE (MAILMETA_SPOOL_NAME_MAX + 1)

/* Encodes user into out (out_size >= MAILMETA_SPOOL_NAME_SIZE).  False
   when user is empty or its encoding is longer than
   MAILMETA_SPOOL_NAME_MAX. */
bool mailmeta_spool_encode(const char *user, char *out, size_t out_size);

/* Decodes a marker name into out (size >= strlen(name) + 1).  False when
   name is not a well-formed marker name (dot names included). */
bool mailmeta_spool_decode(const char *name, char *out, size_t out_size);

#endif
