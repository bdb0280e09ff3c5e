// Every label the console shows, in English and Chinese. A key missing in one language falls
// back to English, so a new label never shows up blank. The language comes from ?lang=, then
// from the operator's last choice (localStorage), then English.

const STRINGS = {
  en: {
    title: 'citywatch — Gusu District command centre',
    alerts: 'Alert queue',
    workOrders: 'Work orders',
    charts: 'Zone readings',
    funnel: 'Load today',
    live: 'live',
    polling: 'live (polling)',
    connecting: 'connecting…',
    disconnected: 'disconnected — retrying',
    lastUpdate: 'last update {time}',
    services: { broker: 'broker', database: 'database' },
    serviceOk: '{name}: connected',
    serviceDown: '{name}: not connected',
    serviceUnknown: '{name}: unknown',
    pipeline: { ok: 'pipeline working', degraded: 'pipeline degraded', failing: 'pipeline stuck' },
    counts: {
      messages: 'messages', stored: 'stored', rejected: 'rejected', alerts_open: 'open alerts',
      work_orders_open: 'open orders', dispatched: 'dispatched', lag_s: 'lag (s)',
    },
    levels: {
      1: { letter: 'R', name: 'Red', meaning: 'Extreme — danger to life' },
      2: { letter: 'O', name: 'Orange', meaning: 'Severe' },
      3: { letter: 'Y', name: 'Yellow', meaning: 'Moderate — threshold crossed' },
      4: { letter: 'B', name: 'Blue', meaning: 'Minor — watch' },
    },
    levelByName: { red: 'Red', orange: 'Orange', yellow: 'Yellow', blue: 'Blue' },
    noLevel: 'no warning',
    hazards: {}, // from GET /api/hazards (the hazard registry): addHazardLabels
    zoneTypes: {
      district: 'district', street: 'street', grid_cell: 'grid cell', underpass: 'underpass',
      low_road: 'low road', fall_zone: 'fall zone', intersection: 'intersection',
      road_segment: 'road segment',
    },
    deviceKinds: {
      camera: 'camera', water: 'water depth', rain: 'rain gauge', traffic: 'traffic detector',
      grid: 'grid worker',
    },
    alertStates: { active: 'active', acknowledged: 'acknowledged', resolved: 'resolved' },
    woStates: {
      open: 'open', assigned: 'assigned', accepted: 'accepted', resolved: 'resolved', closed: 'closed',
    },
    acknowledge: 'Acknowledge',
    resolve: 'Resolve',
    working: 'working…',
    actionFailed: 'Could not {action}: {detail}',
    actionNames: {
      acknowledge: 'acknowledge', resolve: 'resolve', assign: 'assign', accept: 'accept',
      close: 'close', reopen: 'reopen',
    },
    actionButtons: {
      assign: 'Assign', accept: 'Accept', resolve: 'Resolve', close: 'Close order', reopen: 'Reopen',
    },
    noConnection: 'no connection to the server',
    timeout: 'the server did not answer in time',
    httpError: 'the server answered {status}',
    unavailable: 'Not available: {detail}',
    noAlerts: 'No active or acknowledged alerts.',
    acknowledgedHeading: 'Acknowledged ({n})',
    alertCounts: '{active} active · {ack} acknowledged',
    woCounts: '{open} in progress · {overdue} overdue · {total} total',
    overdue: 'overdue',
    overdueTag: 'OVERDUE',
    workOrderShort: 'WO {id}',
    openWorkOrder: 'Work order',
    noWorkOrder: 'no work order',
    ago: '{t} ago',
    justNow: 'just now',
    unitS: '{n} s', unitMin: '{n} min', unitH: '{n} h', unitHMin: '{h} h {m} min', unitD: '{n} d',
    tip: {
      type: 'type', level: 'level', hazards: 'hazards', parent: 'in', alerts: 'alerts',
      none: 'none', kind: 'kind', status: 'status', online: 'online', offline: 'offline',
      lastSeen: 'last seen', zones: 'zones', never: 'never', close: 'Close',
    },
    legend: {
      levels: 'Warning level', devices: 'Devices', online: 'online', offline: 'offline',
      pulsing: 'pulsing ring: active alert',
    },
    zoomIn: 'Zoom in', zoomOut: 'Zoom out', zoomReset: 'Whole district (double-click the map)',
    mapUnavailable: 'Map unavailable: {detail}',
    mapEmpty: 'No zones to draw yet.',
    dash: '—',
    evidence: 'Evidence',
    evidenceNone: 'No readings recorded with this alert.',
    evidenceLoading: 'loading evidence…',
    respondBy: 'respond by',
    resolveBy: 'resolve by',
    department: 'Department',
    allDepartments: 'all departments',
    showClosed: 'show closed',
    team: 'team',
    noTeam: 'no team',
    wo: {
      id: 'Work order', hazard: 'Hazard', severity: 'Level', zone: 'Zone', department: 'Department',
      team: 'Team', state: 'State', created: 'Created', respond_by: 'Respond by',
      resolve_by: 'Resolve by', alerts: 'Alerts', duplicates: 'Reports merged', flags: 'Flags',
      escalation_level: 'Escalation level', reopened: 'Reopened',
    },
    history: 'History',
    historyCols: { ts: 'time', change: 'change', actor: 'by', reason: 'reason' },
    actor: 'Acting as',
    reason: 'Reason (optional)',
    teamToAssign: 'Team (for assign)',
    done: 'Done: {id} is now {state}.',
    refused: 'Refused: {id} cannot be {verb} while it is {state}.',
    refusedAllowed: 'From {state} it can be: {allowed}.',
    refusedFinal: 'It is final: nothing more can be done with it.',
    refusedOther: 'Refused: {detail}',
    refusedSensors: 'Refused: the sensors still show {hazard} here; {id} can be {verb} once the readings are back to normal.',
    serverSaid: 'Server: {detail}',
    invalid: 'Not accepted: {detail}',
    notFound: 'Not found: {detail}',
    verbs: {
      assign: 'assigned', accept: 'accepted', resolve: 'resolved', close: 'closed', reopen: 'reopened',
      acknowledge: 'acknowledged',
    },
    close: 'Close',
    metrics: { water_depth_cm: 'Water depth', rain_rate_mm_h: 'Rain rate', speed_kmh: 'Traffic speed' },
    noReadings: 'no readings',
    noZone: 'Select a zone on the map, or an alert.',
    lastHours: 'last {n} h',
    chartCaption: '5-minute buckets: line = average, shade = maximum; dashed = thresholds',
    funnelStages: {
      messages: 'messages', alerts: 'alerts', incidents: 'incidents', work_orders: 'work orders',
    },
    perOperator: 'orders per operator ({ops} on shift)',
    funnelMore: {
      telemetry: 'readings', events: 'detections and reports', rejected: 'rejected messages',
      duplicates_merged: 'reports merged into orders',
    },
    latest: 'now {avg} · max {max}',
    due: 'due {time}',
    noSensors: 'No water, rain or traffic sensors in this zone.',
    funnelNote: 'since 00:00 {tz}; bars on a log scale',
    language: '中文',
    languageTitle: 'Switch to Chinese (L)',
    helpButton: 'Keyboard shortcuts (?)',
    helpTitle: 'Keyboard shortcuts',
    keys: {
      next: 'next alert', prev: 'previous alert', ack: 'acknowledge the selected alert',
      resolve: 'resolve the selected alert', order: 'open the selected alert\'s work order',
      zoom: 'show the selected alert on the map', lang: 'switch language (English / 中文)',
      help: 'show this list', esc: 'close a dialog or the map details',
    },
    acknowledged: 'acknowledged {id}',
    login: {
      title: 'citywatch — log in', heading: 'Gusu District command centre', user: 'User name',
      password: 'Password', submit: 'Log in', working: 'logging in…',
      wrong: 'Wrong user name or password, or the user is disabled.',
      throttled: 'Too many attempts: try again in {s} s.',
      failed: 'Could not log in: {detail}',
    },
    logout: 'Log out',
    logoutTitle: 'End this session',
    roles: {
      viewer: 'viewer', operator: 'operator', dispatcher: 'dispatcher', team: 'team',
      admin: 'admin',
    },
    actingAs: 'Acting as',
    forbidden: 'Not allowed for your role: {detail}',
    readOnly: 'You may read this order; your role does not act on it.',
    resolveTitle: 'Resolve {id}',
    appealsCount: 'Appeals: {n} from {callers} callers, one incident',
    appealSources: { open311: 'app', hotline: 'hotline' },
    funnelAppeals: 'Residents: {appeals} appeals from {callers} callers → {problems} problems → {orders} work orders',
    hotline: 'Hotline',
    hotlineTitle: 'Hotline appeal',
    hotlineText: 'What the caller says',
    hotlineCategory: 'Category',
    hotlineAuto: 'from the words',
    hotlineOther: 'Other',
    hotlinePhone: "Caller's number",
    hotlineAddress: 'Address: a crossing, a landmark',
    hotlinePick: 'Pick on the map',
    hotlinePickNow: 'Click the place on the map (Esc: back)',
    hotlinePicked: 'picked: {lon}, {lat}',
    hotlineSubmit: 'File appeal',
    hotlineNeedsText: 'Write what the caller says.',
    hotlineNeedsPlace: 'Pick the place on the map or type an address.',
    hotlineFiled: '{id} filed at {place}: {n} appeals from {callers} callers about it.',
    resolveReason: 'Why is the alert over? (goes into its history)',
    resolveOk: 'Resolve alert',
    resolveNeedsReason: 'Give a reason: it is recorded with your name.',
  },
  zh: {
    title: 'citywatch — 姑苏区指挥中心',
    alerts: '预警队列',
    workOrders: '工单',
    charts: '区域监测数据',
    funnel: '今日负荷',
    live: '实时',
    polling: '实时（轮询）',
    connecting: '连接中…',
    disconnected: '连接中断 — 正在重试',
    lastUpdate: '最后更新 {time}',
    services: { broker: '消息服务器', database: '数据库' },
    serviceOk: '{name}：已连接',
    serviceDown: '{name}：未连接',
    serviceUnknown: '{name}：未知',
    pipeline: { ok: '处理正常', degraded: '处理降级', failing: '处理停滞' },
    counts: {
      messages: '消息', stored: '已存储', rejected: '已拒绝', alerts_open: '未结预警',
      work_orders_open: '未结工单', dispatched: '已派发', lag_s: '延迟（秒）',
    },
    levels: {
      1: { letter: '红', name: '红色', meaning: '特别严重 — 危及生命' },
      2: { letter: '橙', name: '橙色', meaning: '严重' },
      3: { letter: '黄', name: '黄色', meaning: '较重 — 超过阈值' },
      4: { letter: '蓝', name: '蓝色', meaning: '一般 — 关注' },
    },
    levelByName: { red: '红色', orange: '橙色', yellow: '黄色', blue: '蓝色' },
    noLevel: '无预警',
    hazards: {},
    zoneTypes: {
      district: '区', street: '街道', grid_cell: '网格', underpass: '下穿通道', low_road: '低洼路段',
      fall_zone: '坠物区', intersection: '路口', road_segment: '路段',
    },
    deviceKinds: {
      camera: '高空摄像头', water: '水位计', rain: '雨量计', traffic: '交通检测器', grid: '网格员',
    },
    alertStates: { active: '待处理', acknowledged: '已确认', resolved: '已解除' },
    woStates: { open: '待派', assigned: '已指派', accepted: '已接单', resolved: '已办结', closed: '已关闭' },
    acknowledge: '确认',
    resolve: '解除',
    working: '处理中…',
    actionFailed: '无法{action}：{detail}',
    actionNames: {
      acknowledge: '确认', resolve: '解除', assign: '指派', accept: '接单', close: '关闭', reopen: '重开',
    },
    actionButtons: { assign: '指派', accept: '接单', resolve: '办结', close: '关闭工单', reopen: '重开' },
    noConnection: '无法连接服务器',
    timeout: '服务器未及时响应',
    httpError: '服务器返回 {status}',
    unavailable: '暂不可用：{detail}',
    noAlerts: '当前没有待处理或已确认的预警。',
    acknowledgedHeading: '已确认（{n}）',
    alertCounts: '{active} 待处理 · {ack} 已确认',
    woCounts: '{open} 进行中 · {overdue} 超时 · 共 {total}',
    overdue: '超时',
    overdueTag: '超时',
    workOrderShort: '工单 {id}',
    openWorkOrder: '工单',
    noWorkOrder: '无工单',
    ago: '{t}前',
    justNow: '刚刚',
    unitS: '{n} 秒', unitMin: '{n} 分钟', unitH: '{n} 小时', unitHMin: '{h} 小时 {m} 分', unitD: '{n} 天',
    tip: {
      type: '类型', level: '等级', hazards: '灾害', parent: '所属', alerts: '预警', none: '无',
      kind: '种类', status: '状态', online: '在线', offline: '离线', lastSeen: '最后上报',
      zones: '区域', never: '从未', close: '关闭',
    },
    legend: {
      levels: '预警等级', devices: '设备', online: '在线', offline: '离线', pulsing: '闪烁圆环：待处理预警',
    },
    zoomIn: '放大', zoomOut: '缩小', zoomReset: '全区（双击地图）',
    mapUnavailable: '地图不可用：{detail}',
    mapEmpty: '暂无区域。',
    evidence: '证据',
    evidenceNone: '此预警没有记录读数。',
    evidenceLoading: '正在加载证据…',
    respondBy: '响应时限',
    resolveBy: '办结时限',
    department: '部门',
    allDepartments: '全部部门',
    showClosed: '显示已关闭',
    team: '队伍',
    noTeam: '未指定队伍',
    wo: {
      id: '工单', hazard: '灾害', severity: '等级', zone: '区域', department: '部门', team: '队伍',
      state: '状态', created: '创建', respond_by: '响应时限', resolve_by: '办结时限', alerts: '预警',
      duplicates: '合并上报', flags: '标记', escalation_level: '升级层级', reopened: '重开次数',
    },
    history: '处理记录',
    historyCols: { ts: '时间', change: '变化', actor: '操作人', reason: '原因' },
    actor: '当前操作人',
    reason: '原因（可选）',
    teamToAssign: '队伍（指派用）',
    done: '完成：{id} 现为{state}。',
    refused: '被拒绝：{id} 处于{state}状态，不能{verb}。',
    refusedAllowed: '{state}状态下可以：{allowed}。',
    refusedFinal: '已是最终状态，不能再操作。',
    refusedOther: '被拒绝：{detail}',
    refusedSensors: '被拒绝：传感器仍显示此处存在{hazard}；读数恢复正常后 {id} 才能{verb}。',
    serverSaid: '服务器：{detail}',
    invalid: '未被接受：{detail}',
    notFound: '未找到：{detail}',
    verbs: { assign: '指派', accept: '接单', resolve: '办结', close: '关闭', reopen: '重开', acknowledge: '确认' },
    close: '关闭',
    metrics: { water_depth_cm: '积水深度', rain_rate_mm_h: '降雨强度', speed_kmh: '车速' },
    noReadings: '无读数',
    noZone: '请在地图上选择区域，或选择一条预警。',
    lastHours: '最近 {n} 小时',
    chartCaption: '5 分钟分桶：线 = 平均值，阴影 = 最大值；虚线 = 阈值',
    funnelStages: { messages: '消息', alerts: '预警', incidents: '事件', work_orders: '工单' },
    perOperator: '张工单 / 每名值班员（当班 {ops} 人）',
    funnelMore: { telemetry: '监测读数', events: '检测与上报', rejected: '被拒消息', duplicates_merged: '合并入工单的上报' },
    latest: '当前 {avg} · 最大 {max}',
    due: '时限 {time}',
    noSensors: '此区域没有水位、雨量或交通传感器。',
    funnelNote: '自 {tz} 00:00 起；条形为对数刻度',
    language: 'EN',
    languageTitle: 'Switch to English (L)',
    helpButton: '快捷键（?）',
    helpTitle: '快捷键',
    keys: {
      next: '下一条预警', prev: '上一条预警', ack: '确认所选预警', resolve: '解除所选预警',
      order: '打开所选预警的工单', zoom: '在地图上显示所选预警', lang: '切换语言（English / 中文）',
      help: '显示本列表', esc: '关闭对话框或地图详情',
    },
    acknowledged: '已确认 {id}',
    login: {
      title: 'citywatch — 登录', heading: '姑苏区指挥中心', user: '用户名', password: '密码',
      submit: '登录', working: '登录中…', wrong: '用户名或密码错误，或该用户已停用。',
      throttled: '尝试次数过多：请 {s} 秒后再试。', failed: '无法登录：{detail}',
    },
    logout: '退出',
    logoutTitle: '结束本次会话',
    roles: { viewer: '查看', operator: '值班员', dispatcher: '调度员', team: '处置队伍', admin: '管理员' },
    actingAs: '当前操作人',
    forbidden: '您的角色无此权限：{detail}',
    readOnly: '您可以查看此工单；您的角色不能处理它。',
    resolveTitle: '解除 {id}',
    appealsCount: '市民诉求：{n}次，{callers}位来电人，同属一个事件',
    appealSources: { open311: '应用', hotline: '热线' },
    funnelAppeals: '市民：{appeals}次诉求、{callers}位来电人 → {problems}个问题 → {orders}张工单',
    hotline: '热线',
    hotlineTitle: '热线诉求',
    hotlineText: '来电人反映',
    hotlineCategory: '类别',
    hotlineAuto: '按内容判断',
    hotlineOther: '其他',
    hotlinePhone: '来电号码',
    hotlineAddress: '地址：路口、地标',
    hotlinePick: '在地图上选点',
    hotlinePickNow: '请在地图上点击位置（Esc 返回）',
    hotlinePicked: '已选：{lon}, {lat}',
    hotlineSubmit: '提交诉求',
    hotlineNeedsText: '请填写来电人反映的内容。',
    hotlineNeedsPlace: '请在地图上选点或填写地址。',
    hotlineFiled: '{id} 已登记于 {place}：此问题共{n}次诉求、{callers}位来电人。',
    resolveReason: '预警为何结束？（记入历史）',
    resolveOk: '解除预警',
    resolveNeedsReason: '请填写原因：它将与您的姓名一并记录。',
  },
};

export const LANGS = Object.keys(STRINGS);
const STORE_KEY = 'citywatch.lang';

function initialLang() {
  const asked = new URLSearchParams(window.location.search).get('lang');
  if (asked && STRINGS[asked]) return asked;
  try {
    const saved = window.localStorage.getItem(STORE_KEY);
    if (saved && STRINGS[saved]) return saved;
  } catch {
    // Storage may be disabled; English it is.
  }
  return 'en';
}

let lang = initialLang();

export function getLang() {
  return lang;
}

export function setLang(next) {
  if (!STRINGS[next]) return;
  lang = next;
  try {
    window.localStorage.setItem(STORE_KEY, next);
  } catch {
    // Not remembered across reloads; that is all.
  }
}

function lookup(table, path) {
  return path.split('.').reduce((o, k) => (o == null ? undefined : o[k]), table);
}

/** Look up a string by dotted key and fill {placeholders}. */
export function t(key, vars = {}) {
  let s = lookup(STRINGS[lang], key);
  if (s === undefined) s = lookup(STRINGS.en, key);
  if (typeof s !== 'string') return key;
  return s.replace(/\{(\w+)\}/g, (m, k) => (k in vars ? String(vars[k]) : m));
}

/** The hazards' names from the server's registry (GET /api/hazards: built in and plug-ins). */
export function addHazardLabels(hazards) {
  for (const h of hazards || []) {
    if (!h || typeof h.name !== 'string' || !h.label) continue;
    for (const l of LANGS) {
      if (typeof h.label[l] === 'string' && h.label[l]) STRINGS[l].hazards[h.name] = h.label[l];
    }
  }
}

/** Like t(), but with a fallback for keys that come from data (a new zone type, say). */
export function tOr(key, fallback) {
  const s = lookup(STRINGS[lang], key) ?? lookup(STRINGS.en, key);
  return typeof s === 'string' ? s : fallback;
}
