import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { DecryptCommand, GenerateDataKeyCommand, type KMSClient } from '@aws-sdk/client-kms';

/** Encryption context of a vault row, bound to both the wrap and the payload. */
export type EncryptionContext = Record<string, string>;

/** The default context of a vault row: its matter and its token. */
export function rowContext(matterId: string, token: string): EncryptionContext {
  return { matter: matterId, token };
}

/**
 * Serialises a context with its keys sorted, so that the same context always
 * yields the same additional data whatever order its keys were written in.
 */
export function canonicalContext(context: EncryptionContext): Buffer {
  const sorted = Object.keys(context)
    .sort()
    .map((key) => [key, context[key]]);
  return Buffer.from(JSON.stringify(sorted), 'utf8');
}

/** A payload sealed under its own DEK. The DEK is stored apart, wrapped. */
export interface SealedPayload {
  iv: Buffer;
  /** AES-256-GCM ciphertext followed by its 16-byte tag. */
  ciphertext: Buffer;
}

export interface EnvelopeRecord extends SealedPayload {
  wrappedKey: Buffer;
  kekId: string;
}

const ivBytes = 12;
const tagBytes = 16;

/** Encrypts a payload with AES-256-GCM under `dek`, with the context as additional data. */
export function sealPayload(dek: Uint8Array, context: EncryptionContext, plaintext: Uint8Array): SealedPayload {
  if (dek.length !== 32) throw new Error(`invalid DEK length ${dek.length}: AES-256 needs 32 bytes`);
  const iv = randomBytes(ivBytes);
  const cipher = createCipheriv('aes-256-gcm', dek, iv);
  cipher.setAAD(canonicalContext(context));
  const body = Buffer.concat([cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]);
  return { iv, ciphertext: body };
}

/** Decrypts a payload sealed by `sealPayload`; throws if the DEK, context or bytes do not match. */
export function openPayload(dek: Uint8Array, context: EncryptionContext, sealed: SealedPayload): Buffer {
  if (sealed.ciphertext.length < tagBytes) {
    throw new Error(`invalid payload ciphertext: ${sealed.ciphertext.length} bytes is shorter than the GCM tag`);
  }
  const body = sealed.ciphertext.subarray(0, sealed.ciphertext.length - tagBytes);
  const tag = sealed.ciphertext.subarray(sealed.ciphertext.length - tagBytes);
  const decipher = createDecipheriv('aes-256-gcm', dek, sealed.iv);
  decipher.setAAD(canonicalContext(context));
  decipher.setAuthTag(tag);
  return Buffer.concat([decipher.update(body), decipher.final()]);
}

/**
 * Encrypts a payload under a fresh DEK from GenerateDataKey and returns the
 * payload ciphertext with the wrapped DEK. The plaintext DEK is zeroed
 * before returning.
 */
export async function encryptEnvelope(
  kms: KMSClient,
  kekId: string,
  context: EncryptionContext,
  plaintext: Uint8Array,
): Promise<EnvelopeRecord> {
  const output = await kms.send(new GenerateDataKeyCommand({ KeyId: kekId, KeySpec: 'AES_256', EncryptionContext: context }));
  if (output.Plaintext === undefined || output.CiphertextBlob === undefined || output.KeyId === undefined) {
    throw new Error(`GenerateDataKey for key ${kekId} returned no data key`);
  }
  const dek = output.Plaintext;
  try {
    return { ...sealPayload(dek, context, plaintext), wrappedKey: Buffer.from(output.CiphertextBlob), kekId: output.KeyId };
  } finally {
    dek.fill(0);
  }
}

/**
 * Unwraps the DEK through KMS Decrypt under the row's context and decrypts
 * the payload. Passing `kekId` makes KMS reject a blob of any other key.
 */
export async function decryptEnvelope(
  kms: KMSClient,
  record: { wrappedKey: Uint8Array; kekId?: string; iv: Buffer; ciphertext: Buffer },
  context: EncryptionContext,
): Promise<Buffer> {
  const output = await kms.send(
    new DecryptCommand({ CiphertextBlob: record.wrappedKey, EncryptionContext: context, KeyId: record.kekId }),
  );
  if (output.Plaintext === undefined) throw new Error('Decrypt returned no plaintext');
  const dek = output.Plaintext;
  try {
    return openPayload(dek, context, record);
  } finally {
    dek.fill(0);
  }
}
