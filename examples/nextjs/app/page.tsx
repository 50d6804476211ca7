// The signed-in user's page: the server renders the current row (the snapshot), the client
// component keeps it live with relay's updates.
import { redirect } from 'next/navigation';

import { subscriptionOf } from '@/lib/db';
import { currentUserId } from '@/lib/session';

import { changePlan, logOut } from './actions';
import { LiveSubscription } from './live-subscription';

export const dynamic = 'force-dynamic';

export default async function Home() {
  const userId = await currentUserId();
  if (!userId) redirect('/login');
  const subscription = await subscriptionOf(userId);
  return (
    <main>
      <h1>Signed in as {userId}</h1>
      {/* relay's URL (wss://<relay>.fly.dev). Read here, on the server: when it is not set at
          build time, Next.js reads it at request time, so one build serves every relay. */}
      <LiveSubscription
        initial={subscription}
        relayUrl={process.env.NEXT_PUBLIC_WEBSOCKET_URL ?? ''}
      />
      <form action={changePlan}>
        <button type="submit">Change plan</button>
      </form>
      <form action={logOut}>
        <button type="submit">Sign out</button>
      </form>
    </main>
  );
}
