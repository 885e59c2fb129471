import { DecryptCommand, EncryptCommand, ReEncryptCommand, type KMSClient } from '@aws-sdk/client-kms';
import { createKmsClient } from '../client.js';
import type { CiphertextOutput, DecryptInput, EncryptInput, KmsTransport, KmsTransportOptions, PlaintextOutput, ReEncryptInput } from './types.js';
import { KmsRequestError } from './types.js';
import { UndiciHttpHandler } from './undici-handler.js';

/**
 * The AWS SDK's KMSClient. `sdk` is the stock client on a keep-alive
 * `NodeHttpHandler`. `sdk-undici` caches the middleware stack and sends over
 * an undici Pool, which cut the CPU per rewrap by about a quarter in
 * BENCHMARKS.md.
 */
export class SdkTransport implements KmsTransport {
  readonly name: 'sdk' | 'sdk-undici';
  readonly client: KMSClient;
  #handler: UndiciHttpHandler | undefined;

  constructor(name: 'sdk' | 'sdk-undici', options: KmsTransportOptions) {
    this.name = name;
    if (name === 'sdk-undici') {
      this.#handler = new UndiciHttpHandler({ connections: options.maxSockets ?? 64, requestTimeoutMs: options.requestTimeoutMs ?? 15_000 });
    }
    this.client = createKmsClient({ ...options, requestHandler: this.#handler, cacheMiddleware: name === 'sdk-undici' });
  }

  async reEncrypt(input: ReEncryptInput): Promise<CiphertextOutput> {
    const output = await this.client.send(new ReEncryptCommand(input));
    return { CiphertextBlob: required(output.CiphertextBlob, 'ReEncrypt', 'CiphertextBlob'), KeyId: output.KeyId };
  }

  async decrypt(input: DecryptInput): Promise<PlaintextOutput> {
    const output = await this.client.send(new DecryptCommand(input));
    return { Plaintext: required(output.Plaintext, 'Decrypt', 'Plaintext'), KeyId: output.KeyId };
  }

  async encrypt(input: EncryptInput): Promise<CiphertextOutput> {
    const output = await this.client.send(new EncryptCommand(input));
    return { CiphertextBlob: required(output.CiphertextBlob, 'Encrypt', 'CiphertextBlob'), KeyId: output.KeyId };
  }

  async destroy(): Promise<void> {
    this.client.destroy();
    await this.#handler?.close();
  }
}

function required<T>(value: T | undefined, operation: string, field: string): T {
  if (value === undefined) throw new KmsRequestError('EmptyResponse', `${operation} response has no ${field}`);
  return value;
}
