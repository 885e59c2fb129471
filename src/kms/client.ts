import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { KMSClient, type KMSClientConfig } from '@aws-sdk/client-kms';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import type { HttpHandler } from '@smithy/protocol-http';

export interface KmsConnectionOptions {
  /** KMS endpoint URL; unset means the SDK's regional AWS endpoint. */
  endpoint?: string | undefined;
  /** AWS region; falls back to `AWS_REGION`, then `us-east-1`. */
  region?: string | undefined;
  /** Sockets this client may open; size it to the calls it keeps in flight. */
  maxSockets?: number | undefined;
  /** Per-request timeout in milliseconds. */
  requestTimeoutMs?: number | undefined;
  /**
   * Attempts per call, SDK retries included. The default of 1 leaves every
   * retry to rewrap's limiter; clients outside the rotation path, such as
   * the audit trail's, let the SDK retry throttling and 5xx responses.
   */
  maxAttempts?: number | undefined;
}

export interface KmsClientOptions extends KmsConnectionOptions {
  /** Request handler in place of the default keep-alive `NodeHttpHandler`. */
  requestHandler?: HttpHandler<Record<string, never>> | undefined;
  /** Reuses each command's resolved middleware stack instead of building it on every call. */
  cacheMiddleware?: boolean | undefined;
}

/** Credentials used against a loopback emulator when the environment has none. */
export const emulatorCredentials = { accessKeyId: 'AKIAREWRAPEMULATOR', secretAccessKey: 'emulator-does-not-check' };

export function isLoopbackEndpoint(endpoint: string): boolean {
  const host = new URL(endpoint).hostname;
  return host === '127.0.0.1' || host === 'localhost' || host === '[::1]';
}

/** Returns the region to use: the given one, else `AWS_REGION`, else `AWS_DEFAULT_REGION`, else `us-east-1`. */
export function kmsRegion(region?: string): string {
  return region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? 'us-east-1';
}

/**
 * Creates a KMS client whose keep-alive agent allows `maxSockets` sockets,
 * so that the calls in flight neither queue behind the SDK's default of 50
 * nor open sockets without bound. By default the SDK retries nothing
 * (`maxAttempts: 1`), so that every retry of the rotation goes back through
 * rewrap's limiter, which owns the quota.
 *
 * Credentials come from the SDK's default chain. Against an emulator on
 * loopback with no `AWS_ACCESS_KEY_ID` set, fixed dummy credentials are used.
 */
export function createKmsClient(options: KmsClientOptions = {}): KMSClient {
  const maxSockets = options.maxSockets ?? 64;
  const agentOptions = { keepAlive: true, maxSockets, maxFreeSockets: maxSockets };
  const config: KMSClientConfig = {
    region: kmsRegion(options.region),
    maxAttempts: options.maxAttempts ?? 1,
    requestHandler:
      options.requestHandler ??
      new NodeHttpHandler({
        httpAgent: new HttpAgent(agentOptions),
        httpsAgent: new HttpsAgent(agentOptions),
        requestTimeout: options.requestTimeoutMs ?? 15_000,
        connectionTimeout: 5_000,
      }),
  };
  if (options.cacheMiddleware === true) config.cacheMiddleware = true;
  if (options.endpoint !== undefined) {
    config.endpoint = options.endpoint;
    if (isLoopbackEndpoint(options.endpoint) && process.env.AWS_ACCESS_KEY_ID === undefined) {
      config.credentials = emulatorCredentials;
    }
  }
  return new KMSClient(config);
}

/** Error names that mean the KMS is rate limiting the caller. */
const throttlingNames = new Set(['ThrottlingException', 'TooManyRequestsException', 'LimitExceededException']);

/** Error names that mean this ciphertext can never be rewrapped as stored. */
const permanentRowNames = new Set([
  'InvalidCiphertextException',
  'IncorrectKeyException',
  'NotFoundException',
  'ValidationException',
  'InvalidKeyUsageException',
]);

/** Error names that depend on a key's state: permanent for the row only if its source key is the cause. */
const keyStateNames = new Set(['DisabledException', 'KMSInvalidStateException']);

/** Error names that stop the job: retrying or quarantining would not help. */
const fatalNames = new Set([
  'AccessDeniedException',
  'UnrecognizedClientException',
  'InvalidSignatureException',
  'CredentialsProviderError',
  'ExpiredTokenException',
  'IncompleteSignatureException',
]);

export type KmsErrorClass = 'throttled' | 'transient' | 'permanent' | 'key-state' | 'fatal';

/**
 * Classifies a KMS error by its `name`, which is how the SDK reports it: the
 * KMS model has no modeled ThrottlingException, so `instanceof` cannot be used.
 */
export function classifyKmsError(name: string, httpStatus?: number): KmsErrorClass {
  if (throttlingNames.has(name)) return 'throttled';
  if (permanentRowNames.has(name)) return 'permanent';
  if (keyStateNames.has(name)) return 'key-state';
  if (fatalNames.has(name)) return 'fatal';
  if (httpStatus !== undefined && httpStatus >= 400 && httpStatus < 500 && name !== 'TimeoutError') return 'fatal';
  return 'transient';
}
