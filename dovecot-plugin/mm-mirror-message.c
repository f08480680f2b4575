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
#include "mail-storage.h"

#include <openssl/evp.h>
#include <jansson.h>

#include "mm-extract.h"
#include "mm-mirror-id.h"
#include "mm-mirror-message.h"

#define MAILMETA_ID_HEADER "X-Mailmeta-ID"

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
	if (crlf->stream_errno != 0) {
		if (mail->expunged) {
			ret = MM_MIRROR_READ_EXPUNGED;
		} else {
			*error_r = t_strdup_printf("reading UID %u failed: %s",
				mail->uid, i_stream_get_error(crlf));
			ret = MM_MIRROR_READ_FAILED;
		}
	}
	i_stream_unref(&crlf);
	return ret;
}

static void
hash_callback(const unsigned char *data, size_t size, void *context)
{
	EVP_MD_CTX *md = context;

	(void)EVP_DigestUpdate(md, data, size);
}

enum mm_mirror_read
mm_mirror_message_id(struct mail *mail, char id_r[MM_UUID_TEXT_SIZE],
		     const char **error_r)
{
	const char *value;
	unsigned char digest[EVP_MAX_MD_SIZE];
	unsigned int digest_len;
	EVP_MD_CTX *md;
	enum mm_mirror_read ret;
	int hret;

	hret = mail_get_first_header(mail, MAILMETA_ID_HEADER, &value);
	if (hret < 0)
		return read_failure(mail, "'s header", error_r);
	if (hret > 0 && mm_mirror_parse_uuid(value, id_r))
		return MM_MIRROR_READ_OK;

	md = EVP_MD_CTX_new();
	if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
		EVP_MD_CTX_free(md);
		*error_r = "SHA-256 unavailable";
		return MM_MIRROR_READ_FAILED;
	}
	ret = read_message(mail, hash_callback, md, error_r);
	if (ret == MM_MIRROR_READ_OK) {
		if (EVP_DigestFinal_ex(md, digest, &digest_len) != 1 ||
		    digest_len != 32) {
			*error_r = "SHA-256 failed";
			ret = MM_MIRROR_READ_FAILED;
		} else {
			mm_mirror_uuid8_from_sha256(digest, id_r);
		}
	}
	EVP_MD_CTX_free(md);
	return ret;
}

static void
extract_callback(const unsigned char *data, size_t size, void *context)
{
	struct mm_extract *x = context;

	/* a spool failure is flagged in the record by the extractor */
	(void)mm_extract_feed(x, data, size);
}

enum mm_mirror_read
mm_mirror_message_record(struct mail *mail, const char *mailmeta_id,
			 char **json_r, const char **error_r)
{
	char received_at[MM_RFC3339_SIZE];
	struct timespec ts;
	struct mm_extract *x;
	enum mm_mirror_read ret;
	time_t date;
	json_t *doc;

	if (mail_get_received_date(mail, &date) < 0)
		return read_failure(mail, "", error_r);

	mm_extract_library_init();
	x = mm_extract_new(NULL);
	if (x == NULL) {
		*error_r = "out of memory";
		return MM_MIRROR_READ_FAILED;
	}
	ret = read_message(mail, extract_callback, x, error_r);
	if (ret != MM_MIRROR_READ_OK) {
		mm_extract_free(&x);
		return ret;
	}
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
	*json_r = json_dumps(doc, JSON_COMPACT);
	json_decref(doc);
	if (*json_r == NULL) {
		*error_r = "out of memory";
		return MM_MIRROR_READ_FAILED;
	}
	return MM_MIRROR_READ_OK;
}
