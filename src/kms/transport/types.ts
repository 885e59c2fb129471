/** KMS access used by the rewrap workers: the three operations a rotation sends. */

export type KmsTransportName = 'sdk' | 'sdk-undici' | 'signed-undici';

export const kmsTransportNames: readonly KmsTransportName[] = ['sdk', 'sdk-undici', 'signed-undici'];

export interface KmsTransportOptions {
  /** KMS endpoint URL; unset means the regional AWS endpoint. */
  endpoint?: string | undefined;
  /** AWS region; falls back to `AWS_REGION`, then `AWS_DEFAULT_REGION`, then `us-east-1`. */
  region?: string | undefined;
  /** Keep-alive sockets the transport may open; size it to the requests it keeps in flight. */
  maxSockets?: number | undefined;
  /** Per-request timeout in milliseconds. */
  requestTimeoutMs?: number | undefined;
}

export interface ReEncryptInput {
  CiphertextBlob: Uint8Array;
  SourceKeyId?: string | undefined;
  SourceEncryptionContext?: Record<string, string> | undefined;
  DestinationKeyId: string;
  DestinationEncryptionContext?: Record<string, string> | undefined;
}

export interface DecryptInput {
  CiphertextBlob: Uint8Array;
  KeyId?: string | undefined;
  EncryptionContext?: Record<string, string> | undefined;
}

export interface EncryptInput {
  KeyId: string;
  Plaintext: Uint8Array;
  EncryptionContext?: Record<string, string> | undefined;
}

export interface CiphertextOutput {
  CiphertextBlob: Uint8Array;
  /** ARN of the key that wrapped the blob, as the KMS returned it. */
  KeyId: string | undefined;
}

export interface PlaintextOutput {
  /** The caller must zero it once used. */
  Plaintext: Uint8Array;
  KeyId: string | undefined;
}

/**
 * A KMS client for ReEncrypt, Decrypt and Encrypt. Every implementation
 * throws errors of the same shape: `name` is the AWS error type (`__type`
 * without its namespace prefix) and `$metadata.httpStatusCode` the HTTP
 * status. A request that got no response (reset socket, timeout) fails
 * with `name` `TimeoutError`, no status, and the Node error code in `code`. No
 * implementation retries: every retry goes back through the job's limiter.
 */
export interface KmsTransport {
  readonly name: KmsTransportName;
  reEncrypt(input: ReEncryptInput): Promise<CiphertextOutput>;
  decrypt(input: DecryptInput): Promise<PlaintextOutput>;
  encrypt(input: EncryptInput): Promise<CiphertextOutput>;
  /** Closes the transport's sockets. */
  destroy(): Promise<void>;
}

/** A KMS error response or a failed request, shaped like an AWS SDK service exception. */
export class KmsRequestError extends Error {
  readonly $metadata: { httpStatusCode?: number | undefined };
  readonly code: string | undefined;

  constructor(name: string, message: string, httpStatusCode?: number, options?: { cause?: unknown; code?: string }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = name;
    this.$metadata = { httpStatusCode };
    this.code = options?.code;
  }
}

/** Returns the error type of a JSON 1.1 error: `com.amazonaws.kms#NotFoundException` and `NotFoundException:http://…` both become `NotFoundException`. */
export function awsErrorType(raw: string): string {
  const withoutNamespace = raw.includes('#') ? raw.slice(raw.lastIndexOf('#') + 1) : raw;
  const colon = withoutNamespace.indexOf(':');
  return colon === -1 ? withoutNamespace : withoutNamespace.slice(0, colon);
}

export function parseKmsTransportName(value: string): KmsTransportName {
  if ((kmsTransportNames as readonly string[]).includes(value)) return value as KmsTransportName;
  throw new Error(`invalid KMS transport "${value}": expected one of ${kmsTransportNames.join(', ')}`);
}
