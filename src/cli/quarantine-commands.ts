import { parseArgs } from 'node:util';
import pg from 'pg';
import type { Logger } from '../log.js';
import { listQuarantine, releaseQuarantine } from '../quarantine.js';
import { databaseUrlFrom, UsageError } from './args.js';

async function commandQuarantine(argv: string[], logger: Logger): Promise<number> {
  const [action, ...rest] = argv;
  if (action !== 'list' && action !== 'retry') {
    throw new UsageError(`unknown quarantine action "${action ?? ''}": expected "list" or "retry"`);
  }
  const { values } = parseArgs({
    args: rest,
    options: {
      'database-url': { type: 'string' },
      table: { type: 'string' },
      matter: { type: 'string', multiple: true },
      id: { type: 'string', multiple: true },
      all: { type: 'boolean' },
      limit: { type: 'string' },
      json: { type: 'boolean' },
    },
  });
  for (const id of values.id ?? []) {
    if (!/^\d+$/.test(id)) throw new UsageError(`invalid --id "${id}": expected a quarantine record id from "rewrap quarantine list"`);
  }
  const filter = { tableName: values.table, matters: values.matter, ids: values.id };
  const client = new pg.Client({ connectionString: databaseUrlFrom(values['database-url']), application_name: 'rewrap' });
  await client.connect();
  try {
    if (action === 'list') {
      const entries = await listQuarantine(client, filter, values.limit === undefined ? 1000 : Number(values.limit));
      if (values.json === true) {
        for (const entry of entries) console.log(JSON.stringify(entry));
      } else if (entries.length === 0) {
        console.log('no rows in quarantine');
      } else {
        for (const entry of entries) {
          console.log(
            `${entry.id}\t${entry.tableName}\t${entry.rowKey}\t${entry.matterId ?? ''}\t${entry.errorCode}\t` +
              `attempts ${entry.attempts}\t${entry.lastSeen.toISOString()}\t${entry.errorMessage ?? ''}`,
          );
        }
      }
      return 0;
    }
    if (values.all !== true && (values.id ?? []).length === 0 && (values.matter ?? []).length === 0) {
      throw new UsageError('quarantine retry needs --id N (repeatable), --matter ID or --all');
    }
    const released = await releaseQuarantine(client, filter);
    logger.info({ event: 'quarantine.retry', released, ...filter }, 'released quarantined rows for the next rotation');
    console.log(`released ${released} rows; the next "rewrap rotate" of their scope reads them again`);
    return 0;
  } finally {
    await client.end();
  }
}

export const quarantineCommands: Record<string, (argv: string[], logger: Logger) => Promise<number>> = {
  quarantine: commandQuarantine,
};
