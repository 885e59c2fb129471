import { createHash, createHmac, type Hash, type Hmac } from 'node:crypto';
import { defaultProvider } from '@aws-sdk/credential-provider-node';
import { HttpRequest } from '@smithy/protocol-http';
import { SignatureV4 } from '@smithy/signature-v4';
import type { AwsCredentialIdentity, Provider, SourceData } from '@smithy/types';
import { Pool } from 'undici';
import { emulatorCredentials, isLoopbackEndpoint, kmsRegion } from '../client.js';
import type { CiphertextOutput, DecryptInput, EncryptInput, KmsTransport, KmsTransportOptions, PlaintextOutput, ReEncryptInput } from './types.js';
import { awsErrorType, KmsRequestError } from './types.js';
import { networkError } from './undici-handler.js';

/** SHA-256 (or HMAC-SHA256 when given a key) over node:crypto, in the Checksum shape the signer expects. */
class Sha256 {
  #secret: Uint8Array | undefined;
  #hash: Hash | Hmac;

  constructor(secret?: SourceData) {
    this.#secret = secret === undefined ? undefined : toBytes(secret);
    this.#hash = this.#create();
  }

  #create(): Hash | Hmac {
    return this.#secret === undefined ? createHash('sha256') : createHmac('sha256', this.#secret);
  }

  update(data: SourceData): void {
    this.#hash.update(toBytes(data));
  }

  async digest(): Promise<Uint8Array> {
    return this.#hash.digest();
  }

  reset(): void {
    this.#hash = this.#create();
  }
}

function toBytes(data: SourceData): Uint8Array {
  if (typeof data === 'string') return Buffer.from(data, 'utf8');
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return new Uint8Array(data);
}

interface KmsJsonOutput {
  CiphertextBlob?: string;
  Plaintext?: string;
  KeyId?: string;
}

/**
 * Sends the three KMS operations of a rotation as JSON 1.1 requests signed
 * with SigV4 (`@smithy/signature-v4`) over one undici Pool. Credentials come
 * from the AWS SDK's default provider chain, memoized and refreshed before
 * they expire. This skips the SDK's middleware stack, which costs most of
 * its client CPU per request.
 *
 * NOTE: unlike the SDK, this transport does not correct the clock skew
 * reported by a SignatureDoesNotMatch or InvalidSignatureException, and it
 * supports only the plain regional endpoint (no FIPS or dual-stack); pass
 * `endpoint` for any other.
 */
export class SignedUndiciTransport implements KmsTransport {
  readonly name = 'signed-undici' as const;
  #pool: Pool;
  #signer: SignatureV4;
  #url: URL;
  #path: string;

  constructor(options: KmsTransportOptions) {
    const region = kmsRegion(options.region);
    const endpoint = options.endpoint ?? `https://kms.${region}.amazonaws.com`;
    this.#url = new URL(endpoint);
    this.#path = this.#url.pathname === '' ? '/' : this.#url.pathname;
    let credentials: AwsCredentialIdentity | Provider<AwsCredentialIdentity>;
    if (options.endpoint !== undefined && isLoopbackEndpoint(options.endpoint) && process.env.AWS_ACCESS_KEY_ID === undefined) {
      credentials = emulatorCredentials;
    } else {
      credentials = defaultProvider();
    }
    this.#signer = new SignatureV4({ service: 'kms', region, credentials, sha256: Sha256 });
    const requestTimeout = options.requestTimeoutMs ?? 15_000;
    this.#pool = new Pool(this.#url.origin, {
      connections: options.maxSockets ?? 64,
      pipelining: 1,
      headersTimeout: requestTimeout,
      bodyTimeout: requestTimeout,
      connect: { timeout: 5_000 },
    });
  }

  async #call(operation: string, input: Record<string, unknown>): Promise<KmsJsonOutput> {
    const body = JSON.stringify(input);
    const request = new HttpRequest({
      method: 'POST',
      protocol: this.#url.protocol,
      hostname: this.#url.hostname,
      port: this.#url.port === '' ? undefined : Number(this.#url.port),
      path: this.#path,
      headers: {
        host: this.#url.host,
        'content-type': 'application/x-amz-json-1.1',
        'x-amz-target': `TrentService.${operation}`,
        'content-length': String(Buffer.byteLength(body)),
      },
      body,
    });
    const signed = await this.#signer.sign(request);
    let response;
    try {
      response = await this.#pool.request({ path: this.#path, method: 'POST', headers: signed.headers, body });
    } catch (error) {
      throw networkError(error);
    }
    let text: string;
    try {
      text = await response.body.text();
    } catch (error) {
      throw networkError(error);
    }
    if (response.statusCode >= 300) throw errorFromResponse(operation, response.statusCode, response.headers['x-amzn-errortype'], text);
    try {
      return JSON.parse(text) as KmsJsonOutput;
    } catch {
      throw new KmsRequestError('SerializationException', `${operation} response is not valid JSON`, response.statusCode);
    }
  }

  async reEncrypt(input: ReEncryptInput): Promise<CiphertextOutput> {
    const output = await this.#call('ReEncrypt', { ...input, CiphertextBlob: base64(input.CiphertextBlob) });
    return { CiphertextBlob: decoded(output.CiphertextBlob, 'ReEncrypt', 'CiphertextBlob'), KeyId: output.KeyId };
  }

  async decrypt(input: DecryptInput): Promise<PlaintextOutput> {
    const output = await this.#call('Decrypt', { ...input, CiphertextBlob: base64(input.CiphertextBlob) });
    return { Plaintext: decoded(output.Plaintext, 'Decrypt', 'Plaintext'), KeyId: output.KeyId };
  }

  async encrypt(input: EncryptInput): Promise<CiphertextOutput> {
    const output = await this.#call('Encrypt', { ...input, Plaintext: base64(input.Plaintext) });
    return { CiphertextBlob: decoded(output.CiphertextBlob, 'Encrypt', 'CiphertextBlob'), KeyId: output.KeyId };
  }

  async destroy(): Promise<void> {
    await this.#pool.close();
  }
}

function base64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
}

function decoded(value: string | undefined, operation: string, field: string): Buffer {
  if (value === undefined) throw new KmsRequestError('EmptyResponse', `${operation} response has no ${field}`);
  return Buffer.from(value, 'base64');
}

/** Builds the error of a JSON 1.1 error response; the body's `__type` wins over the `x-amzn-ErrorType` header, as in the SDK. */
function errorFromResponse(operation: string, status: number, header: string | string[] | undefined, text: string): KmsRequestError {
  let type: string | undefined;
  let message: string | undefined;
  try {
    const parsed = JSON.parse(text) as { __type?: unknown; message?: unknown; Message?: unknown };
    if (typeof parsed.__type === 'string') type = parsed.__type;
    const rawMessage = parsed.message ?? parsed.Message;
    if (typeof rawMessage === 'string') message = rawMessage;
  } catch {
    // A body that is not JSON (a proxy's error page) leaves the header or the status to name the error.
  }
  if (type === undefined && typeof header === 'string') type = header;
  const name = type === undefined ? (status >= 500 ? 'InternalFailure' : 'UnknownError') : awsErrorType(type);
  return new KmsRequestError(name, message ?? `${operation} failed with HTTP ${status}`, status);
}
