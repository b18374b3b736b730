/* encore's two compiled hot spots, each the exact twin of a Python definition that stays the
   reference (and the fallback where this file is not built):

   - Records: the regular path of streaming.kafka.records' v2 record parser;
   - key64: streaming.events.contract.key64's hash of ids, FNV-1a over UTF-8 then splitmix64.

   Records

   Records(part, buffer, pos, count, base_offset, cls, base_timestamp, timestamp_deltas)
   iterates over the records of one v2 batch whose first record starts at ``pos`` in ``buffer``
   (bytes). Each step reads one record's seven varints, makes ``cls((offset, key, value,
   timestamp))`` (cls is LeanRecord, a tuple subclass; the timestamp is base_timestamp plus the
   record's delta where timestamp_deltas is true, else base_timestamp) and, before returning
   it, advances ``part.records_read`` by 1, ``part.bytes_read`` by the record's length
   field and sets ``part.next_fetch_offset`` to offset + 1, as the Python parser does. Where the
   three are plain int attributes in ``part.__dict__`` (kafka-python's PartitionRecords), they
   are read and written there directly, record by record.

   It only takes the path on which nothing can go wrong: every varint at most nine bytes long,
   every read inside the buffer, no headers, the record's length field equal to what was read,
   an offset and a timestamp that fit in an int64.
   At the first record that is anything else it stops, without side effects for that record,
   and leaves ``pos`` and ``done`` (records yielded) as attributes: the Python parser then
   carries on from there and raises kafka-python's exact error, or reads what is legal but
   unusual (headers, ten-byte varints). So the Python parser stays the one definition of the
   format, and this file is only ever faster, never different.
*/

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef struct {
    PyObject_HEAD
    PyObject *part;
    PyObject *buffer; /* bytes */
    PyTypeObject *cls;
    Py_ssize_t pos;
    Py_ssize_t count;
    Py_ssize_t done;
    long long base_offset;
    long long base_timestamp;
    int timestamp_deltas; /* CreateTime: base_timestamp + each record's delta; else base alone */
    int fast; /* part's counters are plain attributes: read and written in its __dict__ */
} RecordsObject;

static PyObject *s_records_read, *s_bytes_read, *s_next_fetch_offset;

/* One zig-zag varint of at most nine bytes at *pos; 0 (and nothing moved) if it runs past the
   end or is longer. Nine bytes hold 63 bits, so the value is exact in an int64. */
static inline int
read_varint(const unsigned char *buf, Py_ssize_t len, Py_ssize_t *pos, long long *out)
{
    Py_ssize_t p = *pos;
    uint64_t result = 0;
    int shift = 0;
    for (int i = 0; i < 9; i++) {
        if (p >= len)
            return 0;
        unsigned char b = buf[p++];
        result |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) {
            *out = (long long)(result >> 1) ^ -(long long)(result & 1);
            *pos = p;
            return 1;
        }
        shift += 7;
    }
    return 0;
}

static int
add_to(PyObject *part, PyObject *name, long long amount)
{
    PyObject *old = PyObject_GetAttr(part, name);
    if (old == NULL)
        return -1;
    PyObject *delta = PyLong_FromLongLong(amount);
    if (delta == NULL) {
        Py_DECREF(old);
        return -1;
    }
    PyObject *sum = PyNumber_InPlaceAdd(old, delta); /* as Python's += */
    Py_DECREF(old);
    Py_DECREF(delta);
    if (sum == NULL)
        return -1;
    int rc = PyObject_SetAttr(part, name, sum);
    Py_DECREF(sum);
    return rc;
}

static int
set_item(PyObject *dict, PyObject *name, long long value)
{
    PyObject *v = PyLong_FromLongLong(value);
    if (v == NULL)
        return -1;
    int rc = PyDict_SetItem(dict, name, v);
    Py_DECREF(v);
    return rc;
}

/* The value of the int counter ``name`` in ``dict`` if it is an exact int within 62 bits. */
static int
counter(PyObject *dict, PyObject *name, long long *out)
{
    PyObject *v = PyDict_GetItemWithError(dict, name);
    if (v == NULL || !PyLong_CheckExact(v))
        return 0;
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (x == -1 && PyErr_Occurred()) || x > (1LL << 62) || x < -(1LL << 62)) {
        PyErr_Clear();
        return 0;
    }
    *out = x;
    return 1;
}

/* The part's counters after one record of ``length`` bytes, the next fetch at ``next``: read
   and written in its __dict__ where they are plain ints there (kafka-python's PartitionRecords,
   about three times faster), else by getattr, in-place add and setattr, as Python's ``+=``. */
static int
update(RecordsObject *self, long long length, long long next)
{
    if (self->fast) {
        PyObject **where = _PyObject_GetDictPtr(self->part);
        long long records_read, bytes_read;
        if (where != NULL && *where != NULL && PyDict_CheckExact(*where)
            && counter(*where, s_records_read, &records_read)
            && counter(*where, s_bytes_read, &bytes_read)) {
            PyObject *dict = *where;
            Py_INCREF(dict);
            int rc = (set_item(dict, s_records_read, records_read + 1) < 0
                      || set_item(dict, s_bytes_read, bytes_read + length) < 0
                      || set_item(dict, s_next_fetch_offset, next) < 0)
                         ? -1
                         : 0;
            Py_DECREF(dict);
            return rc;
        }
        if (PyErr_Occurred())
            return -1;
    }
    PyObject *n = PyLong_FromLongLong(next);
    if (n == NULL)
        return -1;
    int rc = (add_to(self->part, s_records_read, 1) < 0
              || add_to(self->part, s_bytes_read, length) < 0
              || PyObject_SetAttr(self->part, s_next_fetch_offset, n) < 0)
                 ? -1
                 : 0;
    Py_DECREF(n);
    return rc;
}

/* Whether ``name`` is a plain attribute of instances of ``type``: no data descriptor (a
   property, a slot) for it on the type. Looked up without calling any __get__. */
static int
plain_attribute(PyTypeObject *type, PyObject *name)
{
    PyObject *attr = _PyType_Lookup(type, name); /* borrowed */
    return attr == NULL || Py_TYPE(attr)->tp_descr_set == NULL;
}

/* Whether ``part``'s counters may be read and written in its __dict__: its type keeps the
   default attribute access and defines no descriptor for any of the three. */
static int
counters_in_dict(PyObject *part)
{
    PyTypeObject *type = Py_TYPE(part);
    return type->tp_getattro == PyObject_GenericGetAttr
           && type->tp_setattro == PyObject_GenericSetAttr
           && plain_attribute(type, s_records_read) && plain_attribute(type, s_bytes_read)
           && plain_attribute(type, s_next_fetch_offset);
}

/* ``cls((offset, key, value, timestamp))`` for a tuple subclass ``cls``, taking the four
   references. */
static PyObject *
make_record(PyTypeObject *cls, PyObject *offset, PyObject *key, PyObject *value,
            PyObject *timestamp)
{
#if PY_VERSION_HEX >= 0x030E0000
    /* 3.14 tuples cache their hash: let tuple.__new__ set them up as it does for any tuple */
    PyObject *items = PyTuple_Pack(4, offset, key, value, timestamp);
    Py_DECREF(offset);
    Py_DECREF(key);
    Py_DECREF(value);
    Py_DECREF(timestamp);
    if (items == NULL)
        return NULL;
    PyObject *args = PyTuple_Pack(1, items);
    Py_DECREF(items);
    if (args == NULL)
        return NULL;
    PyObject *rec = PyTuple_Type.tp_new(cls, args, NULL);
    Py_DECREF(args);
    return rec;
#else
    PyObject *rec = cls->tp_alloc(cls, 4);
    if (rec == NULL) {
        Py_DECREF(offset);
        Py_DECREF(key);
        Py_DECREF(value);
        Py_DECREF(timestamp);
        return NULL;
    }
    PyTuple_SET_ITEM(rec, 0, offset);
    PyTuple_SET_ITEM(rec, 1, key);
    PyTuple_SET_ITEM(rec, 2, value);
    PyTuple_SET_ITEM(rec, 3, timestamp);
    return rec;
#endif
}

static PyObject *
records_next(RecordsObject *self)
{
    if (self->buffer == NULL || self->part == NULL || self->cls == NULL)
        return NULL; /* cleared by the collector, or never initialised */
    if (self->done >= self->count || self->pos < 0) /* a corrupt count: Python's to judge */
        return NULL;
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(self->buffer);
    Py_ssize_t len = PyBytes_GET_SIZE(self->buffer);
    Py_ssize_t pos = self->pos;
    long long length, skip, ts_delta, delta, key_len, value_len, headers;
    if (!read_varint(buf, len, &pos, &length))
        return NULL;
    Py_ssize_t start = pos;
    if (!read_varint(buf, len, &pos, &skip)        /* attributes */
        || !read_varint(buf, len, &pos, &ts_delta) /* timestamp delta */
        || !read_varint(buf, len, &pos, &delta)    /* offset delta */
        || !read_varint(buf, len, &pos, &key_len))
        return NULL;
    Py_ssize_t key_at = pos;
    if (key_len >= 0) {
        if (key_len > len - pos)
            return NULL;
        pos += (Py_ssize_t)key_len;
    }
    if (!read_varint(buf, len, &pos, &value_len))
        return NULL;
    Py_ssize_t value_at = pos;
    if (value_len >= 0) {
        if (value_len > len - pos)
            return NULL;
        pos += (Py_ssize_t)value_len;
    }
    if (!read_varint(buf, len, &pos, &headers) || headers != 0)
        return NULL;
    if ((long long)(pos - start) != length)
        return NULL;
    long long offset, timestamp = self->base_timestamp;
    if (__builtin_add_overflow(self->base_offset, delta, &offset) || offset == INT64_MAX)
        return NULL; /* beyond int64: the Python parser's arbitrary-precision ints take it */
    if (self->timestamp_deltas && __builtin_add_overflow(timestamp, ts_delta, &timestamp))
        return NULL; /* likewise */
    PyObject *key, *value, *off, *stamp, *rec;
    if (key_len >= 0) {
        key = PyBytes_FromStringAndSize((const char *)buf + key_at, (Py_ssize_t)key_len);
        if (key == NULL)
            return NULL;
    } else {
        key = Py_NewRef(Py_None);
    }
    if (value_len >= 0) {
        value = PyBytes_FromStringAndSize((const char *)buf + value_at, (Py_ssize_t)value_len);
        if (value == NULL) {
            Py_DECREF(key);
            return NULL;
        }
    } else {
        value = Py_NewRef(Py_None);
    }
    off = PyLong_FromLongLong(offset);
    if (off == NULL) {
        Py_DECREF(key);
        Py_DECREF(value);
        return NULL;
    }
    stamp = PyLong_FromLongLong(timestamp);
    if (stamp == NULL) {
        Py_DECREF(key);
        Py_DECREF(value);
        Py_DECREF(off);
        return NULL;
    }
    rec = make_record(self->cls, off, key, value, stamp);
    if (rec == NULL)
        return NULL;
    if (update(self, length, offset + 1) < 0) {
        Py_DECREF(rec);
        return NULL;
    }
    self->pos = pos;
    self->done += 1;
    return rec;
}

static int
records_init(RecordsObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"part",           "buffer",           "pos", "count", "base_offset",
                             "cls",            "base_timestamp",   "timestamp_deltas", NULL};
    PyObject *part, *buffer, *cls;
    Py_ssize_t pos, count;
    long long base_offset, base_timestamp;
    int timestamp_deltas;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!nnLO!Lp", kwlist, &part, &PyBytes_Type,
                                     &buffer, &pos, &count, &base_offset, &PyType_Type, &cls,
                                     &base_timestamp, &timestamp_deltas))
        return -1;
    if (!PyType_IsSubtype((PyTypeObject *)cls, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "cls must be a tuple subclass");
        return -1;
    }
    Py_XSETREF(self->part, Py_NewRef(part));
    self->fast = counters_in_dict(part);
    Py_XSETREF(self->buffer, Py_NewRef(buffer));
    Py_XSETREF(self->cls, (PyTypeObject *)Py_NewRef(cls));
    self->pos = pos;
    self->count = count;
    self->done = 0;
    self->base_offset = base_offset;
    self->base_timestamp = base_timestamp;
    self->timestamp_deltas = timestamp_deltas;
    return 0;
}

static int
records_traverse(RecordsObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->part);
    Py_VISIT(self->cls);
    return 0;
}

static int
records_clear(RecordsObject *self)
{
    Py_CLEAR(self->part);
    Py_CLEAR(self->buffer);
    Py_CLEAR(self->cls);
    return 0;
}

static void
records_dealloc(RecordsObject *self)
{
    PyObject_GC_UnTrack(self);
    records_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
records_get_pos(RecordsObject *self, void *closure)
{
    return PyLong_FromSsize_t(self->pos);
}

static PyObject *
records_get_done(RecordsObject *self, void *closure)
{
    return PyLong_FromSsize_t(self->done);
}

static PyGetSetDef records_getset[] = {
    {"pos", (getter)records_get_pos, NULL, "where the next record starts", NULL},
    {"done", (getter)records_get_done, NULL, "how many records were returned", NULL},
    {NULL},
};

static PyTypeObject RecordsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "streaming.kafka._native.Records",
    .tp_basicsize = sizeof(RecordsObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The regular records of one v2 batch (see the module's source for the contract).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)records_init,
    .tp_dealloc = (destructor)records_dealloc,
    .tp_traverse = (traverseproc)records_traverse,
    .tp_clear = (inquiry)records_clear,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)records_next,
    .tp_getset = records_getset,
};

/* key64(ids: list[str]) -> bytes: 8 bytes per id, native-endian uint64, FNV-1a 64 over the id's
   UTF-8 bytes, then the splitmix64 finaliser, as streaming.events.contract.key64 computes them
   with numpy. A str that has no UTF-8 form (a lone surrogate) raises UnicodeEncodeError, as
   str.encode does. */
static PyObject *
key64(PyObject *module, PyObject *ids)
{
    if (!PyList_CheckExact(ids)) {
        PyErr_SetString(PyExc_TypeError, "key64 takes a list of str");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(ids);
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(uint64_t));
    if (out == NULL)
        return NULL;
    uint64_t *h = (uint64_t *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *id = PyList_GET_ITEM(ids, i);
        if (!PyUnicode_Check(id)) {
            PyErr_Format(PyExc_TypeError, "key64 takes a list of str, got %.100s",
                         Py_TYPE(id)->tp_name);
            Py_DECREF(out);
            return NULL;
        }
        Py_ssize_t len;
        const unsigned char *b = (const unsigned char *)PyUnicode_AsUTF8AndSize(id, &len);
        if (b == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        uint64_t x = 0xCBF29CE484222325ULL;
        for (Py_ssize_t j = 0; j < len; j++) {
            x ^= b[j];
            x *= 0x100000001B3ULL;
        }
        x ^= x >> 30;
        x *= 0xBF58476D1CE4E5B9ULL;
        x ^= x >> 27;
        x *= 0x94D049BB133111EBULL;
        x ^= x >> 31;
        h[i] = x;
    }
    return out;
}

static PyMethodDef native_methods[] = {
    {"key64", (PyCFunction)key64, METH_O, "FNV-1a 64 + splitmix64 of each id, as bytes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef records_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "streaming.kafka._native",
    .m_doc = "encore's compiled hot spots: the regular v2 record path and key64.",
    .m_size = -1,
    .m_methods = native_methods,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    s_records_read = PyUnicode_InternFromString("records_read");
    s_bytes_read = PyUnicode_InternFromString("bytes_read");
    s_next_fetch_offset = PyUnicode_InternFromString("next_fetch_offset");
    if (s_records_read == NULL || s_bytes_read == NULL || s_next_fetch_offset == NULL)
        return NULL;
    if (PyType_Ready(&RecordsType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&records_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Records", (PyObject *)&RecordsType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
