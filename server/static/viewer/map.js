/*
 * geoharbor map viewer: draws the server's MapLibre style of one or more collections.
 *
 * The page hands over its settings as JSON (#gh-map-config), never as code. Feature
 * properties come from the data and are untrusted: they are written with textContent
 * only, never as HTML. For tests, <body> carries data-rendered-features (how many
 * features the collection layers draw when the map is first idle) and data-map-error.
 */
(function () {
  'use strict';

  var config = JSON.parse(document.getElementById('gh-map-config').textContent);
  var status = document.getElementById('gh-status');
  /* A click or hover this many pixels off a point or a thin line still hits it. */
  var TOLERANCE = 4;

  function reportError(message) {
    if (!document.body.dataset.mapError) {
      document.body.dataset.mapError = message;
    }
    status.textContent = message;
    status.hidden = false;
  }

  if (typeof maplibregl === 'undefined') {
    reportError('MapLibre GL JS did not load');
    return;
  }

  var map;
  try {
    map = new maplibregl.Map({
      container: 'map',
      style: config.style,
      bounds: config.bounds || undefined,
      fitBoundsOptions: {padding: 24, maxZoom: 14},
      center: config.bounds ? undefined : [0, 20],
      zoom: config.bounds ? undefined : 1,
      attributionControl: false,
      hash: false
    });
  } catch (err) {
    /* No WebGL: MapLibre throws from the constructor rather than firing "error". */
    reportError('the map cannot start: ' + (err && err.message ? err.message : String(err)));
    return;
  }
  map.addControl(new maplibregl.NavigationControl({visualizePitch: false}), 'top-right');
  map.addControl(new maplibregl.ScaleControl({unit: 'metric'}), 'bottom-left');

  var dataLayers = [];

  /* Every layer drawing a source: the collections (the background has none). */
  function collectDataLayers() {
    dataLayers = map.getStyle().layers
      .filter(function (layer) { return layer.source !== undefined; })
      .map(function (layer) { return layer.id; });
  }

  function around(point) {
    return [[point.x - TOLERANCE, point.y - TOLERANCE], [point.x + TOLERANCE, point.y + TOLERANCE]];
  }

  function featuresAt(point) {
    return dataLayers.length ? map.queryRenderedFeatures(around(point), {layers: dataLayers}) : [];
  }

  function text(tag, value, className) {
    var node = document.createElement(tag);
    node.textContent = value;
    if (className) {
      node.className = className;
    }
    return node;
  }

  function display(value) {
    if (value === null || value === undefined) {
      return '';
    }
    return typeof value === 'object' ? JSON.stringify(value) : String(value);
  }

  function popupContent(feature) {
    var cid = feature.sourceLayer;
    var collection = config.collections[cid] || {title: cid};
    var properties = feature.properties || {};
    var root = document.createElement('div');
    root.className = 'gh-popup';
    var heading = text('h2', collection.title);
    var fid = properties[collection.idField];
    if (fid === undefined) {
      fid = feature.id;
    }
    if (fid !== undefined && fid !== null && collection.url) {
      heading.appendChild(document.createTextNode(' '));
      var link = text('a', '#' + display(fid));
      link.href = collection.url + '/items/' + encodeURIComponent(display(fid));
      heading.appendChild(link);
    }
    root.appendChild(heading);
    var table = document.createElement('table');
    Object.keys(properties).forEach(function (key) {
      var row = document.createElement('tr');
      row.appendChild(text('th', key));
      row.appendChild(text('td', display(properties[key])));
      table.appendChild(row);
    });
    root.appendChild(table);
    return root;
  }

  map.on('styledata', collectDataLayers);

  map.on('error', function (event) {
    var err = event && event.error;
    reportError((err && err.message) || 'map error');
  });

  /* Once: querying the whole viewport after every pan would cost users time for nothing. */
  map.once('idle', function () {
    collectDataLayers();
    var rendered = dataLayers.length ? map.queryRenderedFeatures({layers: dataLayers}) : [];
    document.body.dataset.renderedFeatures = String(rendered.length);
  });

  map.on('click', function (event) {
    var features = featuresAt(event.point);
    if (!features.length) {
      return;
    }
    new maplibregl.Popup({maxWidth: '360px'})
      .setLngLat(event.lngLat)
      .setDOMContent(popupContent(features[0]))
      .addTo(map);
  });

  map.on('mousemove', function (event) {
    map.getCanvas().style.cursor = featuresAt(event.point).length ? 'pointer' : '';
  });

  window.geoharborMap = map; /* for debugging from the console */
}());
