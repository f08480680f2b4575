/*
 * mm-hash-stream.c - a GMime stream that SHA-256-hashes what is written
 *
 * Part sizes and hashes describe decoded content, which can be as large as
 * the message.  GMime decodes a part while writing it to a stream
 * (g_mime_data_wrapper_write_to_stream), so a stream that only counts and
 * feeds an OpenSSL EVP digest hashes any part in constant memory.  It can
 * be written and nothing else.
 */
#include <openssl/evp.h>

#include "mm-extract-private.h"

typedef struct {
	GMimeStream parent;
	EVP_MD_CTX *md;
	gint64 bytes;
} MmHashStream;

typedef struct {
	GMimeStreamClass parent_class;
} MmHashStreamClass;

static GType mm_hash_stream_get_type(void);

G_DEFINE_TYPE(MmHashStream, mm_hash_stream, GMIME_TYPE_STREAM)

#define MM_HASH_STREAM(o) \
	(G_TYPE_CHECK_INSTANCE_CAST((o), mm_hash_stream_get_type(), MmHashStream))

static ssize_t
mm_hash_write(GMimeStream *stream, const char *buf, size_t len)
{
	MmHashStream *h = MM_HASH_STREAM(stream);

	if (h->md == NULL || EVP_DigestUpdate(h->md, buf, len) != 1)
		return -1;
	h->bytes += (gint64)len;
	stream->position += (gint64)len;
	return (ssize_t)len;
}

static ssize_t
mm_hash_read(GMimeStream *stream, char *buf, size_t len)
{
	(void)stream, (void)buf, (void)len;
	return -1;
}

static int
mm_hash_nop(GMimeStream *stream)
{
	(void)stream;
	return 0;
}

static gboolean
mm_hash_eos(GMimeStream *stream)
{
	(void)stream;
	return TRUE;
}

static gint64
mm_hash_seek(GMimeStream *stream, gint64 offset, GMimeSeekWhence whence)
{
	(void)stream, (void)offset, (void)whence;
	return -1;
}

static gint64
mm_hash_tell(GMimeStream *stream)
{
	return stream->position;
}

static gint64
mm_hash_length(GMimeStream *stream)
{
	return MM_HASH_STREAM(stream)->bytes;
}

static GMimeStream *
mm_hash_substream(GMimeStream *stream, gint64 start, gint64 end)
{
	(void)stream, (void)start, (void)end;
	return NULL;
}

static void
mm_hash_stream_finalize(GObject *object)
{
	EVP_MD_CTX_free(MM_HASH_STREAM(object)->md);
	G_OBJECT_CLASS(mm_hash_stream_parent_class)->finalize(object);
}

static void
mm_hash_stream_class_init(MmHashStreamClass *klass)
{
	GMimeStreamClass *s = GMIME_STREAM_CLASS(klass);

	G_OBJECT_CLASS(klass)->finalize = mm_hash_stream_finalize;
	s->read = mm_hash_read;
	s->write = mm_hash_write;
	s->flush = mm_hash_nop;
	s->close = mm_hash_nop;
	s->eos = mm_hash_eos;
	s->reset = mm_hash_nop;
	s->seek = mm_hash_seek;
	s->tell = mm_hash_tell;
	s->length = mm_hash_length;
	s->substream = mm_hash_substream;
}

static void
mm_hash_stream_init(MmHashStream *h)
{
	h->md = EVP_MD_CTX_new();
	if (h->md != NULL && EVP_DigestInit_ex(h->md, EVP_sha256(), NULL) != 1) {
		EVP_MD_CTX_free(h->md);
		h->md = NULL;
	}
}

GMimeStream *
mm_hash_stream_new(void)
{
	GMimeStream *s = g_object_new(mm_hash_stream_get_type(), NULL);

	g_mime_stream_construct(s, 0, -1);
	return s;
}

void
mm_hash_stream_result(GMimeStream *stream, char hex[65], gint64 *bytes)
{
	MmHashStream *h = MM_HASH_STREAM(stream);
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n = 0, i;
	EVP_MD_CTX *copy = EVP_MD_CTX_new();

	hex[0] = '\0';
	*bytes = h->bytes;
	if (copy == NULL || h->md == NULL ||
	    EVP_MD_CTX_copy_ex(copy, h->md) != 1 ||
	    EVP_DigestFinal_ex(copy, md, &n) != 1)
		n = 0;
	EVP_MD_CTX_free(copy);
	for (i = 0; i < n && i < 32; i++)
		g_snprintf(hex + 2 * i, 3, "%02x", md[i]);
}
