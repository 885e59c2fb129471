import pg from 'pg';

/** Runs `fn` with a connected client and closes the client afterwards, whatever `fn` does. */
export async function withClient<T>(databaseUrl: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: databaseUrl, application_name: 'rewrap' });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}
