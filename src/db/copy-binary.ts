/**
 * Encoder for PostgreSQL's binary COPY format. Binary COPY needs no escaping,
 * so tokens with backslashes, tabs or newlines and blobs with any byte value
 * travel unchanged.
 *
 * Layout: an 11-byte signature, a 32-bit flags word and a 32-bit header
 * extension length; then per tuple a 16-bit field count and, per field, a
 * 32-bit length (-1 for NULL) followed by the value; then a 16-bit -1.
 */
const signature = Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1');

export type CopyField =
  | { type: 'int8'; value: bigint | string }
  | { type: 'text'; value: string | null }
  | { type: 'bytea'; value: Uint8Array | null };

export function copyHeader(): Buffer {
  const header = Buffer.alloc(signature.length + 8);
  signature.copy(header, 0);
  return header;
}

export function copyTrailer(): Buffer {
  const trailer = Buffer.alloc(2);
  trailer.writeInt16BE(-1, 0);
  return trailer;
}

/** Encodes one tuple. int8 values are given as bigint or decimal strings, never as numbers, to stay exact past 2^53. */
export function encodeTuple(fields: readonly CopyField[]): Buffer {
  const parts: Buffer[] = [];
  const count = Buffer.alloc(2);
  count.writeInt16BE(fields.length, 0);
  parts.push(count);
  for (const field of fields) {
    if (field.value === null) {
      const length = Buffer.alloc(4);
      length.writeInt32BE(-1, 0);
      parts.push(length);
      continue;
    }
    let body: Buffer;
    if (field.type === 'int8') {
      body = Buffer.alloc(8);
      body.writeBigInt64BE(typeof field.value === 'bigint' ? field.value : BigInt(field.value), 0);
    } else if (field.type === 'text') {
      body = Buffer.from(field.value, 'utf8');
    } else {
      body = Buffer.from(field.value.buffer, field.value.byteOffset, field.value.byteLength);
    }
    const length = Buffer.alloc(4);
    length.writeInt32BE(body.length, 0);
    parts.push(length, body);
  }
  return Buffer.concat(parts);
}
