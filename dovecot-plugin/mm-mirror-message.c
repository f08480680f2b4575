/*
 * mm-mirror-message.c - mailmeta_id and metadata record of a stored message
 * (see mm-mirror-message.h)
 *
 * The message is read through i_stream_create_crlf(), so the hash, the
 * size and the record describe the CRLF form whatever the storage keeps
 * (Maildir stores LF): the same bytes the milter saw and IMAP BODY[] shows.
 */
#include "lib.h"
#include "istream.h"
#include "istream-crlf.h"
#include "str.h"
#include "mail-storage.h"

#include <openssl/evp.h>
#include <jansson.h>

#include "mm-extract.h"
#include "mm-mirror-header.h"
#include "mm-mirror-id.h"
#include "mm-mirror-json.h"
#include "mm-mirror-message.h"

typedef void mm_mirror_read_callback_t(const unsigned char *data, size_t size,
				       void *context);

/* What a failed read of MAIL means: the message went away meanwhile
   (expunged by another session), or an error worth reporting. */
static enum mm_mirror_read
read_failure(struct mail *mail, const char *what, const char **error_r)
{
	enum mail_error error;
	const char *errstr = mailbox_get_last_internal_error(mail->box, &error);

	if (error == MAIL_ERROR_EXPUNGED)
		return MM_MIRROR_READ_EXPUNGED;
	*error_r = t_strdup_printf("reading UID %u%s failed: %s",
				   mail->uid, what, errstr);
	return MM_MIRROR_READ_FAILED;
}

/* What a read error on input, a stream of MAIL, means (see
   read_failure()). */
static enum mm_mirror_read
stream_failure(struct mail *mail, struct istream *input, const char *what,
	       const char **error_r)
{
	if (mail->expunged)
		return MM_MIRROR_READ_EXPUNGED;
	*error_r = t_strdup_printf("reading UID %u%s failed: %s", mail->uid,
				   what, i_stream_get_error(input));
	return MM_MIRROR_READ_FAILED;
}

/* Feeds the whole message, CRLF line ends, to callback. */
static enum mm_mirror_read
read_message(struct mail *mail, mm_mirror_read_callback_t *callback,
	     void *context, const char **error_r)
{
	struct istream *input, *crlf;
	const unsigned char *data;
	size_t size;
	enum mm_mirror_read ret = MM_MIRROR_READ_OK;

	if (mail_get_stream_because(mail, NULL, NULL, "mailmeta mirror",
				    &input) < 0)
		return read_failure(mail, "", error_r);
	crlf = i_stream_create_crlf(input);
	while (i_stream_read_more(crlf, &data, &size) > 0) {
		callback(data, size, context);
		i_stream_skip(crlf, size);
	}
	if (crlf->stream_errno != 0)
		ret = stream_failure(mail, crlf, "", error_r);
	i_stream_unref(&crlf);
	return ret;
}

/* Looks for the X-Mailmeta-ID the milter stamped.  Returns 0 when there
   is none, else 1 with *read_r telling whether id_r holds it (OK) or
   reading the header failed. */
static int
stamped_id(struct mail *mail, char id_r[MM_UUID_TEXT_SIZE],
	   enum mm_mirror_read *read_r, const char **error_r)
{
	struct istream *input;
	bool stamped;

	if (mail_get_stream_because(mail, NULL, NULL, "mailmeta mirror",
				    &input) < 0) {
		*read_r = read_failure(mail, "'s header", error_r);
		return 1;
	}
	stamped = mm_mirror_header_id(input, id_r);
	if (input->stream_errno != 0) {
		*read_r = stream_failure(mail, input, "'s header", error_r);
		return 1;
	}
	*read_r = MM_MIRROR_READ_OK;
	return stamped ? 1 : 0;
}

/* What one read of the message feeds: the SHA-256 of its id, and when
   wanted the extractor of its record. */
struct id_reader {
	EVP_MD_CTX *md;
	struct mm_extract *x;
};

static void
id_callback(const unsigned char *data, size_t size, void *context)
{
	struct id_reader *r = context;

	(void)EVP_DigestUpdate(r->md, data, size);
	/* a spool failure is flagged in the record by the extractor */
	if (r->x != NULL)
		(void)mm_extract_feed(r->x, data, size);
}

/* Reads the whole message once for its name-based id (and into x, when
   not NULL). */
static enum mm_mirror_read
hashed_id(struct mail *mail, struct mm_extract *x,
	  char id_r[MM_UUID_TEXT_SIZE], const char **error_r)
{
	unsigned char digest[EVP_MAX_MD_SIZE];
	unsigned int digest_len;
	struct id_reader reader = { .x = x };
	enum mm_mirror_read ret;

	reader.md = EVP_MD_CTX_new();
	if (reader.md == NULL ||
	    EVP_DigestInit_ex(reader.md, EVP_sha256(), NULL) != 1) {
		EVP_MD_CTX_free(reader.md);
		*error_r = "SHA-256 unavailable";
		return MM_MIRROR_READ_FAILED;
	}
	ret = read_message(mail, id_callback, &reader, error_r);
	if (ret == MM_MIRROR_READ_OK) {
		if (EVP_DigestFinal_ex(reader.md, digest, &digest_len) != 1 ||
		    digest_len != 32) {
			*error_r = "SHA-256 failed";
			ret = MM_MIRROR_READ_FAILED;
		} else {
			mm_mirror_uuid8_from_sha256(digest, id_r);
		}
	}
	EVP_MD_CTX_free(reader.md);
	return ret;
}

bool
mm_mirror_message_stamped(struct mail *mail, char id_r[MM_UUID_TEXT_SIZE])
{
	enum mm_mirror_read read;
	const char *error;

	return stamped_id(mail, id_r, &read, &error) > 0 &&
		read == MM_MIRROR_READ_OK;
}

enum mm_mirror_read
mm_mirror_message_id(struct mail *mail, char id_r[MM_UUID_TEXT_SIZE],
		     const char **error_r)
{
	enum mm_mirror_read ret;

	if (stamped_id(mail, id_r, &ret, error_r) > 0)
		return ret;
	return hashed_id(mail, NULL, id_r, error_r);
}

static void
extract_callback(const unsigned char *data, size_t size, void *context)
{
	struct mm_extract *x = context;

	/* a spool failure is flagged in the record by the extractor */
	(void)mm_extract_feed(x, data, size);
}

/* The record of the message x was fed, as JSON; frees x. */
static enum mm_mirror_read
record_finish(struct mm_extract *x, const char *mailmeta_id, time_t date,
	      char **json_r, const char **error_r)
{
	char received_at[MM_RFC3339_SIZE];
	struct timespec ts;
	string_t *text;
	json_t *doc;

	doc = mm_extract_finish(x);
	mm_extract_free(&x);
	if (doc == NULL) {
		*error_r = "out of memory";
		return MM_MIRROR_READ_FAILED;
	}

	/* received_at: when the message entered the mailbox (its IMAP
	   internal date), which stays the same on every resync */
	ts.tv_sec = date;
	ts.tv_nsec = 0;
	mm_rfc3339_utc(&ts, received_at);
	json_object_set_new(doc, "version", json_integer(1));
	json_object_set_new(doc, "mailmeta_id", json_string(mailmeta_id));
	json_object_set_new(doc, "queue_id", json_null());
	json_object_set_new(doc, "received_at", json_string(received_at));
	json_object_set_new(doc, "direction", json_string("mailbox"));
	json_object_set_new(doc, "client", json_null());
	json_object_set_new(doc, "tls", json_null());
	json_object_set_new(doc, "sasl_user", json_null());
	json_object_set_new(doc, "env_from", json_null());
	json_object_set_new(doc, "recipients", json_array());
	json_object_set_new(doc, "action", json_string("accept"));
	json_object_set_new(doc, "reason", json_null());
	text = str_new(default_pool, 4096);
	mm_mirror_json_append(text, doc);
	*json_r = str_free_without_data(&text);
	json_decref(doc);
	return MM_MIRROR_READ_OK;
}

/* Reads the message once and builds its record, under mailmeta_id, or
   when id_r is not NULL under the name-based id the same read hashes. */
static enum mm_mirror_read
record_build(struct mail *mail, const char *mailmeta_id,
	     char id_r[MM_UUID_TEXT_SIZE], char **json_r, const char **error_r)
{
	struct mm_extract *x;
	enum mm_mirror_read ret;
	time_t date;

	if (mail_get_received_date(mail, &date) < 0)
		return read_failure(mail, "", error_r);
	mm_extract_library_init();
	x = mm_extract_new(NULL);
	if (x == NULL) {
		*error_r = "out of memory";
		return MM_MIRROR_READ_FAILED;
	}
	if (id_r != NULL) {
		ret = hashed_id(mail, x, id_r, error_r);
		mailmeta_id = id_r;
	} else {
		ret = read_message(mail, extract_callback, x, error_r);
	}
	if (ret != MM_MIRROR_READ_OK) {
		mm_extract_free(&x);
		return ret;
	}
	return record_finish(x, mailmeta_id, date, json_r, error_r);
}

enum mm_mirror_read
mm_mirror_message_record(struct mail *mail, const char *mailmeta_id,
			 char **json_r, const char **error_r)
{
	return record_build(mail, mailmeta_id, NULL, json_r, error_r);
}

enum mm_mirror_read
mm_mirror_message_id_record(struct mail *mail, char id_r[MM_UUID_TEXT_SIZE],
			    char **json_r, const char **error_r)
{
	enum mm_mirror_read ret;

	*json_r = NULL;
	if (stamped_id(mail, id_r, &ret, error_r) > 0)
		return ret;
	return record_build(mail, NULL, id_r, json_r, error_r);
}
