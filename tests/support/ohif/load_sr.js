#!/usr/bin/env node
// Load a DICOM SR file through OHIF's own SR SOP class handler
// (@ohif/extension-cornerstone-dicom-sr, the published bundle) under node and print, as JSON,
// what OHIF extracts from it: the SR display set (label, series description), its measurements
// (tracking identifiers, labels, coordinates, which film each attached to) and the annotations
// OHIF hands to cornerstone for drawing.
//
// Only the UI and rendering peers are replaced (React is bundled; @ohif/core, @ohif/ui-next,
// @ohif/i18n, @ohif/extension-cornerstone, @cornerstonejs/core and /tools by small stand-ins);
// the handler, dcmjs and @cornerstonejs/adapters are the real packages. Like the viewer, the SR
// is naturalised with dcmjs, and every image it lists as evidence is offered as an image
// display set, so the handler attaches each measurement to its film.
//
// Several files are the instances of one SR series, handed to the handler together as the
// viewer does (e.g. a result and the amended result that replaced it): the handler sorts them
// with @ohif/core's sortStudyInstances, whose default order (Instance Number, then SOP
// Instance UID) the stand-in below reproduces, and shows the last one.
//
// usage: node load_sr.js SR.dcm [SR.dcm ...]  -> JSON on stdout; exit 0 when load()
// succeeded, 1 when it threw (the JSON then has "error").
'use strict';

const fs = require('fs');
const Module = require('module');

// ---- stand-ins -----------------------------------------------------------------------------
// A permissive object: any property is another stand-in, calling or constructing one works.
function permissive(name) {
  const fn = function () {};
  return new Proxy(fn, {
    get(target, prop) {
      if (prop === '__esModule') return false;
      if (prop === Symbol.toPrimitive) return () => `[stub ${name}]`;
      if (prop === 'then') return undefined; // not a promise
      if (prop in target) return target[prop];
      target[prop] = permissive(`${name}.${String(prop)}`);
      return target[prop];
    },
    apply() { return undefined; },
    construct() { return {}; },
  });
}

const annotations = [];
class AnnotationTool {
  constructor() {}
  getToolName() { return this.constructor.toolName; }
}
const tools = new Proxy({
  AnnotationTool,
  addTool() {},
  annotation: {
    state: {
      addAnnotation(a) { annotations.push(a); },
      getAnnotations() { return []; },
      getAnnotationManager() { return { getFramesOfReference: () => [] }; },
    },
    config: { style: { setToolGroupToolStyles() {}, getToolGroupToolStyles: () => ({}) } },
    locking: { setAnnotationLocked() {} },
  },
}, { get: (t, p) => (p in t ? t[p] : permissive(`tools.${String(p)}`)) });

const csCore = new Proxy({
  utilities: {
    imageToWorldCoords: (imageId, [x, y]) => [x, y, 0],
    worldToImageCoords: (imageId, [x, y]) => [x, y],
  },
  metaData: { get: () => undefined },
}, { get: (t, p) => (p in t ? t[p] : permissive(`csCore.${String(p)}`)) });

const sopClassDictionary = {
  BasicTextSR: '1.2.840.10008.5.1.4.1.1.88.11',
  EnhancedSR: '1.2.840.10008.5.1.4.1.1.88.22',
  ComprehensiveSR: '1.2.840.10008.5.1.4.1.1.88.33',
  Comprehensive3DSR: '1.2.840.10008.5.1.4.1.1.88.34',
};
let guidCounter = 0;
// @ohif/core's default instance order (utils/sortStudy.ts sortByInstanceNumber): Instance
// Number, then SOP Instance UID (its creation date/time tie-break left out: the node's SRs in
// one series always differ in Instance Number); sorted in place, like the original.
function byInstanceNumber(a, b) {
  const na = parseInt(a.InstanceNumber) || 0;
  const nb = parseInt(b.InstanceNumber) || 0;
  if (na !== nb) return na - nb;
  return a.SOPInstanceUID < b.SOPInstanceUID ? -1 : a.SOPInstanceUID > b.SOPInstanceUID ? 1 : 0;
}
const ohifCore = {
  utils: {
    guid: () => `guid-${++guidCounter}`,
    sortStudyInstances: instances => instances.sort(byInstanceNumber),
    sortDisplaySetsCopy: displaySets => [...displaySets],
    sopClassDictionary,
  },
  classes: {
    MetadataProvider: {
      getUIDsFromImageID(imageId) {
        const [, SOPInstanceUID, frame] = imageId.split(':');
        return { SOPInstanceUID, frameNumber: frame ? Number(frame) : undefined };
      },
    },
  },
  log: { info() {}, warn() {}, error() {}, debug() {} },
};
ohifCore.default = ohifCore;

const stubs = {
  '@ohif/core': ohifCore,
  '@ohif/core/src/contextProviders/SystemProvider': permissive('SystemProvider'),
  '@ohif/extension-cornerstone': {
    Enums: { CORNERSTONE_3D_TOOLS_SOURCE_NAME: 'Cornerstone3DTools', CORNERSTONE_3D_TOOLS_SOURCE_VERSION: '0.1' },
  },
  '@ohif/i18n': { t: s => s, default: { t: s => s } },
  '@ohif/ui-next': permissive('ui-next'),
  '@cornerstonejs/core': csCore,
  '@cornerstonejs/tools': tools,
};
const originalLoad = Module._load;
Module._load = function (request, parent, isMain) {
  if (Object.prototype.hasOwnProperty.call(stubs, request)) return stubs[request];
  return originalLoad.call(this, request, parent, isMain);
};

// ---- load ------------------------------------------------------------------------------------
const warnings = [];
const originalWarn = console.warn;
console.warn = (...args) => warnings.push(args.map(String).join(' '));
console.log = (...args) => warnings.push(args.map(String).join(' ')); // the handler's chatter

function out(obj, code) {
  process.stdout.write(JSON.stringify(obj, null, 2) + '\n');
  process.exitCode = code;
}

function asArray(x) { return x === undefined || x === null ? [] : Array.isArray(x) ? x : [x]; }

function readInstance(dcmjs, file) {
  const buf = fs.readFileSync(file);
  const dicom = dcmjs.data.DicomMessage.readFile(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
  const instance = dcmjs.data.DicomMetaDictionary.naturalizeDataset(dicom.dict);
  instance.imageId = `dicomfile:${instance.SOPInstanceUID}`;
  return instance;
}

async function main(files) {
  const dcmjs = require('dcmjs');
  const extension = require('@ohif/extension-cornerstone-dicom-sr').default;

  if (!files.length) throw new Error('usage: node load_sr.js SR.dcm [SR.dcm ...]');
  const instances = files.map(file => readInstance(dcmjs, file));
  const classes = new Set(instances.map(i => i.SOPClassUID));
  if (classes.size !== 1) throw new Error(`one series, one SOP class: ${[...classes]}`);
  const instance = instances[0];

  // One image display set per evidence image (the films the SRs were made from).
  const imageDisplaySets = [];
  const offered = new Set();
  for (const study of instances.flatMap(i => asArray(i.CurrentRequestedProcedureEvidenceSequence))) {
    for (const series of asArray(study.ReferencedSeriesSequence)) {
      for (const sop of asArray(series.ReferencedSOPSequence)) {
        if (offered.has(sop.ReferencedSOPInstanceUID)) continue;
        offered.add(sop.ReferencedSOPInstanceUID);
        imageDisplaySets.push({
          displaySetInstanceUID: `image-${sop.ReferencedSOPInstanceUID}`,
          SeriesInstanceUID: series.SeriesInstanceUID,
          sopClassUids: [sop.ReferencedSOPClassUID],
          images: [{ SOPInstanceUID: sop.ReferencedSOPInstanceUID, SOPClassUID: sop.ReferencedSOPClassUID }],
          imageIds: [`dicomfile:${sop.ReferencedSOPInstanceUID}`],
        });
      }
    }
  }
  const notifications = [];
  const servicesManager = {
    services: {
      displaySetService: {
        activeDisplaySets: imageDisplaySets,
        getDisplaySetCache: () => new Map(),
        subscribe() { return { unsubscribe() {} }; },
        EVENTS: { DISPLAY_SETS_ADDED: 'event::displaySetService:displaySetsAdded' },
      },
      measurementService: { getSourceMappings: () => [] },
      customizationService: { getCustomization: () => undefined },
      uiNotificationService: { show: n => notifications.push(n) },
    },
  };
  const dataSource = { getImageIdsForDisplaySet: ds => ds.imageIds, retrieve: {} };
  const extensionManager = { getDataSources: () => [dataSource], getActiveDataSource: () => [dataSource] };

  const handlers = extension.getSopClassHandlerModule({ servicesManager, extensionManager });
  const handler = handlers.find(h => h.sopClassUids.includes(instance.SOPClassUID));
  if (!handler) throw new Error(`no OHIF SR handler for SOP class ${instance.SOPClassUID}`);
  const displaySets = handler.getDisplaySetsFromSeries([...instances]);
  const result = {
    handler: handler.name,
    displaySet: null,
    measurements: [],
    annotations: [],
    notifications,
    warnings,
  };
  const ds = displaySets[0];
  result.displaySet = ds && {
    label: ds.label,
    SOPInstanceUID: ds.SOPInstanceUID,   // the instance the display set shows
    SOPClassUID: ds.SOPClassUID,
    instances: (ds.instances || []).length,
    SeriesDescription: ds.SeriesDescription,
    SeriesDate: ds.SeriesDate,
    SeriesTime: ds.SeriesTime,
    isImagingMeasurementReport: ds.isImagingMeasurementReport,
  };
  try {
    if (!ds) throw new Error('OHIF made no display set from the SR');
    await ds.load();
  } catch (err) {
    result.error = `${err && err.name}: ${err && err.message}`;
    result.stack = String(err && err.stack).split('\n').slice(0, 6);
    out(result, 1);
    return;
  }
  result.displaySet.isLoaded = ds.isLoaded;
  result.displaySet.referencedImages = ds.referencedImages;
  result.measurements = (ds.measurements || []).map(m => ({
    TrackingIdentifier: m.TrackingIdentifier,
    TrackingUniqueIdentifier: m.TrackingUniqueIdentifier,
    loaded: m.loaded,
    ReferencedSOPInstanceUID: m.ReferencedSOPInstanceUID,
    graphicType: m.graphicType,
    coords: (m.coords || []).map(c => ({
      ValueType: c.ValueType,
      GraphicType: c.GraphicType,
      GraphicData: Array.from(c.GraphicData || []),
      ReferencedSOPInstanceUID: c.ReferencedSOPSequence && c.ReferencedSOPSequence.ReferencedSOPInstanceUID,
    })),
    labels: m.labels,
    displayText: m.displayText,
  }));
  result.annotations = annotations.map(a => ({
    referencedImageId: a.metadata.referencedImageId,
    label: a.data.label,
    labels: a.data.labels,
    TrackingUniqueIdentifier: a.data.TrackingUniqueIdentifier,
  }));
  out(result, 0);
}

main(process.argv.slice(2)).catch(err => {
  console.warn = originalWarn;
  out({ error: `${err && err.name}: ${err && err.message}`, stack: String(err && err.stack).split('\n').slice(0, 8), warnings }, 1);
});
