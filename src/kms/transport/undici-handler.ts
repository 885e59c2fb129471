import type { HttpHandler, HttpRequest } from '@smithy/protocol-http';
import { HttpResponse } from '@smithy/protocol-http';
import type { HttpHandlerOptions } from '@smithy/types';
import { Pool, errors as undiciErrors } from 'undici';
import { KmsRequestError } from './types.js';

export interface UndiciHandlerOptions {
  /** Keep-alive connections per origin. */
  connections: number;
  requestTimeoutMs: number;
  connectTimeoutMs?: number;
}

/**
 * Maps an undici failure to the shape that the SDK (3.x with
 * `@smithy/node-http-handler` 4.x) gives: a reset socket and a timeout both
 * become `TimeoutError` with the Node code in `code`, so the caller
 * classifies every transport's failures alike.
 */
export function networkError(error: unknown): Error {
  if (error instanceof undiciErrors.HeadersTimeoutError || error instanceof undiciErrors.BodyTimeoutError || error instanceof undiciErrors.ConnectTimeoutError) {
    return new KmsRequestError('TimeoutError', `KMS request timed out: ${error.message}`, undefined, { cause: error });
  }
  if (error instanceof undiciErrors.SocketError) {
    return new KmsRequestError('TimeoutError', `KMS connection failed: ${error.message}`, undefined, { cause: error, code: 'ECONNRESET' });
  }
  const code = (error as { code?: unknown }).code;
  if (typeof code === 'string' && code.startsWith('E')) {
    return new KmsRequestError(code, `KMS request failed: ${(error as Error).message}`, undefined, { cause: error, code });
  }
  return error instanceof Error ? error : new Error(String(error));
}

/** A Smithy request handler for the AWS SDK that sends over one undici Pool per origin. */
export class UndiciHttpHandler implements HttpHandler<Record<string, never>> {
  #options: UndiciHandlerOptions;
  #pools = new Map<string, Pool>();

  constructor(options: UndiciHandlerOptions) {
    this.#options = options;
  }

  #pool(origin: string): Pool {
    let pool = this.#pools.get(origin);
    if (pool === undefined) {
      pool = new Pool(origin, {
        connections: this.#options.connections,
        pipelining: 1,
        headersTimeout: this.#options.requestTimeoutMs,
        bodyTimeout: this.#options.requestTimeoutMs,
        connect: { timeout: this.#options.connectTimeoutMs ?? 5_000 },
      });
      this.#pools.set(origin, pool);
    }
    return pool;
  }

  async handle(request: HttpRequest, options?: HttpHandlerOptions): Promise<{ response: HttpResponse }> {
    const port = request.port === undefined ? '' : `:${request.port}`;
    const origin = `${request.protocol}//${request.hostname}${port}`;
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(request.query ?? {})) {
      if (value === null) continue;
      for (const item of Array.isArray(value) ? value : [value]) query.append(key, item);
    }
    const search = query.size > 0 ? `?${query.toString()}` : '';
    let result;
    try {
      result = await this.#pool(origin).request({
        path: `${request.path}${search}`,
        method: request.method as 'POST',
        headers: request.headers,
        body: request.body as string | Uint8Array | undefined,
        signal: options?.abortSignal as AbortSignal | undefined,
      });
    } catch (error) {
      throw networkError(error);
    }
    let body: Buffer;
    try {
      body = Buffer.from(await result.body.arrayBuffer());
    } catch (error) {
      throw networkError(error);
    }
    const headers: Record<string, string> = {};
    for (const [key, value] of Object.entries(result.headers)) {
      if (value !== undefined) headers[key] = Array.isArray(value) ? value.join(', ') : value;
    }
    return { response: new HttpResponse({ statusCode: result.statusCode, headers, body }) };
  }

  updateHttpClientConfig(): void {
    // The pool settings are fixed at construction.
  }

  httpHandlerConfigs(): Record<string, never> {
    return {};
  }

  destroy(): void {
    for (const pool of this.#pools.values()) void pool.destroy();
    this.#pools.clear();
  }

  async close(): Promise<void> {
    await Promise.all([...this.#pools.values()].map((pool) => pool.close()));
    this.#pools.clear();
  }
}
