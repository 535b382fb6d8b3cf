// 简体中文. Typed by the English keys: a key missing here fails the build.

import type { en } from './en'
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

export const zhCN: Record<keyof typeof en, string> = {
  ...common.zhCN,
  ...signin.zhCN,
  ...overview.zhCN,
  ...usage.zhCN,
  ...keys.zhCN,
  ...billing.zhCN,
  ...playground.zhCN,
  ...tenants.zhCN,
  ...models.zhCN,
  ...pool.zhCN,
  ...health.zhCN,
}
