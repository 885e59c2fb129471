import type { IncomingMessage, ServerResponse } from 'node:http';

import { KmsError } from './errors.js';

export const JSON_CONTENT_TYPE = 'application/x-amz-json-1.1';

/** Reads a request body of at most `limit` bytes and rejects a larger one with a 413 ValidationException. */
export function readBody(request: IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let length = 0;
    request.on('data', (chunk: Buffer) => {
      length += chunk.length;
      if (length > limit) {
        request.removeAllListeners('data');
        request.resume();
        reject(new KmsError('ValidationException', `Request body is larger than ${limit} bytes.`, 413));
        return;
      }
      chunks.push(chunk);
    });
    request.on('end', () => resolve(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, length)));
    request.on('error', reject);
  });
}

/** Parses a JSON object body, treating an empty body as `{}`. Throws SerializationException for anything else. */
export function parseJsonObject(body: Buffer): Record<string, unknown> {
  if (body.length === 0) return {};
  let value: unknown;
  try {
    value = JSON.parse(body.toString('utf8'));
  } catch {
    throw new KmsError('SerializationException', 'The request body is not valid JSON.');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new KmsError('SerializationException', 'The request body must be a JSON object.');
  }
  return value as Record<string, unknown>;
}

export function sendJson(response: ServerResponse, status: number, body: unknown, requestId?: string): void {
  const text = JSON.stringify(body);
  const headers: Record<string, string | number> = {
    'Content-Type': JSON_CONTENT_TYPE,
    'Content-Length': Buffer.byteLength(text),
  };
  if (requestId !== undefined) headers['x-amzn-RequestId'] = requestId;
  response.writeHead(status, headers);
  response.end(text);
}

export function sendError(response: ServerResponse, error: KmsError, requestId?: string): void {
  const text = JSON.stringify({ __type: error.name, message: error.message });
  const headers: Record<string, string | number> = {
    'Content-Type': JSON_CONTENT_TYPE,
    'Content-Length': Buffer.byteLength(text),
    'x-amzn-ErrorType': error.name,
  };
  if (requestId !== undefined) headers['x-amzn-RequestId'] = requestId;
  response.writeHead(error.status, headers);
  response.end(text);
}
