import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';

import { invalidCiphertext } from './errors.js';

/**
 * Ciphertext blob layout, version 1:
 *
 *   offset 0   1 byte    version (0x01)
 *   offset 1   16 bytes  key id, the UUID in binary
 *   offset 17  12 bytes  random AES-GCM IV
 *   offset 29  n bytes   AES-256-GCM ciphertext of the plaintext
 *   last 16    16 bytes  GCM authentication tag
 *
 * The additional authenticated data is the 16 key id bytes followed by the
 * canonical encryption context (see `canonicalContext`). So a wrong context,
 * a changed byte, or a header naming another key all fail authentication.
 */
export const BLOB_VERSION = 1;
const KEY_ID_OFFSET = 1;
const IV_OFFSET = 17;
const CIPHERTEXT_OFFSET = 29;
const TAG_LENGTH = 16;
export const MIN_BLOB_LENGTH = CIPHERTEXT_OFFSET + TAG_LENGTH;

export type EncryptionContext = Record<string, string>;

/** Serializes a context as JSON with keys sorted by UTF-16 code unit, or `{}` when it is empty. */
export function canonicalContext(context: EncryptionContext | undefined): string {
  if (context === undefined) return '{}';
  const keys = Object.keys(context);
  if (keys.length === 0) return '{}';
  keys.sort();
  const sorted: EncryptionContext = {};
  for (const key of keys) sorted[key] = context[key] as string;
  return JSON.stringify(sorted);
}

export function uuidToBytes(keyId: string): Buffer {
  return Buffer.from(keyId.replace(/-/g, ''), 'hex');
}

export function bytesToUuid(bytes: Buffer): string {
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

function additionalData(keyIdBytes: Buffer, context: EncryptionContext | undefined): Buffer {
  return Buffer.concat([keyIdBytes, Buffer.from(canonicalContext(context), 'utf8')]);
}

/** Encrypts `plaintext` under `material` (32 bytes) and returns a version 1 blob. */
export function sealBlob(keyIdBytes: Buffer, material: Buffer, plaintext: Uint8Array, context: EncryptionContext | undefined): Buffer {
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', material, iv);
  cipher.setAAD(additionalData(keyIdBytes, context));
  const body = cipher.update(plaintext);
  cipher.final();
  const tag = cipher.getAuthTag();
  return Buffer.concat([Buffer.of(BLOB_VERSION), keyIdBytes, iv, body, tag], MIN_BLOB_LENGTH + body.length);
}

/**
 * Returns the key id that a blob's header names, as a UUID string.
 * Throws InvalidCiphertextException when the blob is too short or has an unknown version.
 */
export function readBlobKeyId(blob: Buffer): string {
  if (blob.length < MIN_BLOB_LENGTH || blob[0] !== BLOB_VERSION) throw invalidCiphertext();
  return bytesToUuid(blob.subarray(KEY_ID_OFFSET, IV_OFFSET));
}

/** Decrypts a blob whose header was checked by `readBlobKeyId`. Throws InvalidCiphertextException when authentication fails. */
export function openBlob(blob: Buffer, material: Buffer, context: EncryptionContext | undefined): Buffer {
  const keyIdBytes = blob.subarray(KEY_ID_OFFSET, IV_OFFSET);
  const iv = blob.subarray(IV_OFFSET, CIPHERTEXT_OFFSET);
  const body = blob.subarray(CIPHERTEXT_OFFSET, blob.length - TAG_LENGTH);
  const tag = blob.subarray(blob.length - TAG_LENGTH);
  const decipher = createDecipheriv('aes-256-gcm', material, iv, { authTagLength: TAG_LENGTH });
  decipher.setAAD(additionalData(keyIdBytes, context));
  decipher.setAuthTag(tag);
  try {
    const head = decipher.update(body);
    const tail = decipher.final();
    return tail.length === 0 ? head : Buffer.concat([head, tail]);
  } catch {
    throw invalidCiphertext();
  }
}
