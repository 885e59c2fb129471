import { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';
import { serializeError } from '../../src/log.js';

export interface CapturedLogger {
  logger: Logger;
  /** Every line logged so far, parsed. */
  lines(): Array<Record<string, unknown>>;
  /** Everything logged so far as raw text, for checks that no secret leaked. */
  text(): string;
}

/** Creates a pino logger that records its output in memory. */
export function captureLogger(level = 'debug'): CapturedLogger {
  const chunks: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      chunks.push(chunk.toString('utf8'));
      callback();
    },
  });
  const logger = pino({ level, serializers: { err: serializeError } }, sink);
  return {
    logger,
    text: () => chunks.join(''),
    lines: () =>
      chunks
        .join('')
        .split('\n')
        .filter((line) => line.length > 0)
        .map((line) => JSON.parse(line) as Record<string, unknown>),
  };
}
