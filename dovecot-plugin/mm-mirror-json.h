/*
 * mm-mirror-json.h - compact JSON text of a jansson value, for the
 * documents the watcher sends to PostgreSQL
 */
#ifndef MM_MIRROR_JSON_H
#define MM_MIRROR_JSON_H

#include <jansson.h>

/* Appends json to dest as compact JSON, as json_dumps(JSON_COMPACT)
   writes it (keys in insertion order).  jansson's values hold no
   reference loops when built with json_*_set_new() and json_pack(), as
   the watcher builds them. */
void mm_mirror_json_append(string_t *dest, const json_t *json);

/* mm_mirror_json_append() into a string of the data stack. */
const char *mm_mirror_json_text(const json_t *json);

#endif
