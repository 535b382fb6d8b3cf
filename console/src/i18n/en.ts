// English: the reference dictionary. Each page keeps its own strings beside it; this joins them.

import * as common from './common'
import * as signin from '../pages/signin/strings'
import * as overview from '../pages/overview/strings'
import * as usage from '../pages/usage/strings'
import * as keys from '../pages/keys/strings'
import * as billing from '../pages/billing/strings'
import * as playground from '../pages/playground/strings'
import * as tenants from '../pages/tenants/strings'
import * as models from '../pages/models/strings'
import * as pool from '../pages/pool/strings'
import * as health from '../pages/health/strings'

/** Every part, for the test that no two parts use the same key. */
export const parts = [common, signin, overview, usage, keys, billing, playground, tenants, models, pool, health] as const

export const en = {
  ...common.en,
  ...signin.en,
  ...overview.en,
  ...usage.en,
  ...keys.en,
  ...billing.en,
  ...playground.en,
  ...tenants.en,
  ...models.en,
  ...pool.en,
  ...health.en,
}
