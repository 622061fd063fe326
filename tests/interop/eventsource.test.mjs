// npm `eventsource` (the EventSource most Node code uses) against ssed.

import { EventSource } from 'eventsource';
import { defineScenarios } from './lib/scenarios.mjs';

export function eventsUrl(base, streams, lastEventId) {
  const url = new URL('/events', base);
  for (const s of streams) url.searchParams.append('stream', s);
  if (lastEventId) url.searchParams.set('last_event_id', lastEventId);
  return url;
}

const adapter = {
  async connect({ base, streams, lastEventId, types }) {
    const es = new EventSource(eventsUrl(base, streams, lastEventId));
    const st = { events: [], opens: 0, errors: 0 };
    es.addEventListener('open', () => { st.opens += 1; });
    es.addEventListener('error', () => { st.errors += 1; });
    for (const t of ['message', ...types]) {
      es.addEventListener(t, (e) => st.events.push({ type: e.type, id: e.lastEventId, data: e.data }));
    }
    return {
      snapshot: async () => ({ ...st, events: [...st.events], readyState: es.readyState }),
      close: async () => es.close(),
    };
  },
};

defineScenarios('eventsource (npm)', adapter);
