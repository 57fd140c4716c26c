"""Metadata documents of a catalogue resource: ISO 19115/19139 and Dublin Core XML.

The resource is the catalogue's dict (:mod:`providers.catalogue`): title, abstract,
keywords, regions, category, owner, dates, bbox (EPSG:4326), srid and links. The ISO
document is what GeoNode serves as a resource's ``ISO`` link (``gmd:MD_Metadata``,
elements in the order of the 19139 schema so that validating readers accept it); the
Dublin Core one is a CSW ``csw:Record`` or an OAI-PMH ``oai_dc:dc``. Both are built with
lxml, so text is escaped by the library, never by hand.

:func:`read_title` reads the title back from an uploaded ISO or Dublin Core document
(GeoNode's ``xml_file``), with a parser that resolves no entity and fetches nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from lxml import etree

NS = {
    "gmd": "http://www.isotc211.org/2005/gmd",
    "gco": "http://www.isotc211.org/2005/gco",
    "gml": "http://www.opengis.net/gml",
    "xlink": "http://www.w3.org/1999/xlink",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
    "csw": "http://www.opengis.net/cat/csw/2.0.2",
    "dc": "http://purl.org/dc/elements/1.1/",
    "dct": "http://purl.org/dc/terms/",
    "ows": "http://www.opengis.net/ows",
    "oai_dc": "http://www.openarchives.org/OAI/2.0/oai_dc/",
}
CODE_LISTS = "http://standards.iso.org/iso/19139/resources/gmxCodelists.xml"
ISO_SCHEMA = (
    "http://www.isotc211.org/2005/gmd http://schemas.opengis.net/csw/2.0.2/profiles/apiso/1.0.0/apiso.xsd"
)

#: ISO 19115 MD_TopicCategoryCode values (GeoNode's category identifiers are these).
TOPIC_CATEGORIES = frozenset(
    {
        "farming",
        "biota",
        "boundaries",
        "climatologyMeteorologyAtmosphere",
        "economy",
        "elevation",
        "environment",
        "geoscientificInformation",
        "health",
        "imageryBaseMapsEarthCover",
        "intelligenceMilitary",
        "inlandWaters",
        "location",
        "oceans",
        "planningCadastre",
        "society",
        "structure",
        "transportation",
        "utilitiesCommunication",
    }
)
#: Link kinds of a resource -> the protocol an ISO online resource names.
PROTOCOLS = {
    "OGC:API-Features": "OGC API - Features",
    "OGC:API-Tiles": "OGC API - Tiles",
    "WWW:DOWNLOAD-1.0-http--download": "download",
    "WWW:LINK-1.0-http--link": "link",
}

#: Parser for documents clients send: no entities, no network, bounded.
SAFE_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, remove_comments=True)


def _q(prefix: str, name: str) -> str:
    return f"{{{NS[prefix]}}}{name}"


def _sub(parent: etree._Element, prefix: str, name: str, **attrs: str) -> etree._Element:
    element = etree.SubElement(parent, _q(prefix, name))
    for key, value in attrs.items():
        element.set(key, value)
    return element


def _text(parent: etree._Element, prefix: str, name: str, value: Any) -> etree._Element:
    """``<prefix:name><gco:CharacterString>value</gco:CharacterString></prefix:name>``."""
    element = _sub(parent, prefix, name)
    _sub(element, "gco", "CharacterString").text = "" if value is None else str(value)
    return element


def _code(parent: etree._Element, name: str, code_list: str, value: str) -> etree._Element:
    """A gmd element holding a code list value (role, date type, scope ...)."""
    wrapper = _sub(parent, "gmd", name)
    code = _sub(wrapper, "gmd", code_list, codeList=f"{CODE_LISTS}#{code_list}", codeListValue=value)
    code.text = value
    return wrapper


def _names(values: Any) -> list[str]:
    """Keyword or region names, whether the catalogue gives strings or ``{"name": ...}`` objects."""
    out = []
    for value in values or []:
        name = value.get("name") if isinstance(value, dict) else value
        if name:
            out.append(str(name))
    return out


def _date(value: Any) -> str:
    """An ISO 8601 date-time from what the catalogue holds (text, epoch or datetime)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).isoformat()
    if isinstance(value, str) and value:
        return value
    return datetime.now(UTC).isoformat()


def _owner(resource: dict[str, Any]) -> str:
    owner = resource.get("owner")
    if isinstance(owner, dict):
        return str(owner.get("username") or owner.get("pk") or "")
    return str(owner or "")


def _contact(parent: etree._Element, name: str, who: str, role: str) -> None:
    party = _sub(_sub(parent, "gmd", name), "gmd", "CI_ResponsibleParty")
    _text(party, "gmd", "individualName", who)
    _code(party, "role", "CI_RoleCode", role)


def _category(resource: dict[str, Any]) -> str | None:
    category = resource.get("category")
    if isinstance(category, dict):
        return category.get("identifier")
    return category if isinstance(category, str) else None


def iso19139(resource: dict[str, Any], links: list[dict[str, Any]] | None = None) -> bytes:
    """The resource as an ISO 19139 ``gmd:MD_Metadata`` document (UTF-8 bytes).

    ``links``: the online resources to list (``url``, ``name``, ``protocol``,
    ``description``); by default the resource's own ``links`` that carry a ``url``.
    """
    root = etree.Element(
        _q("gmd", "MD_Metadata"), nsmap={k: NS[k] for k in ("gmd", "gco", "gml", "xlink", "xsi")}
    )
    root.set(_q("xsi", "schemaLocation"), ISO_SCHEMA)
    _text(root, "gmd", "fileIdentifier", resource.get("uuid"))
    language = _sub(_sub(root, "gmd", "language"), "gmd", "LanguageCode")
    language.set("codeList", "http://www.loc.gov/standards/iso639-2/")
    language.set("codeListValue", str(resource.get("language") or "eng"))
    language.text = str(resource.get("language") or "eng")
    _code(root, "characterSet", "MD_CharacterSetCode", "utf8")
    scope = "dataset" if resource.get("resource_type", "dataset") == "dataset" else "nonGeographicDataset"
    _code(root, "hierarchyLevel", "MD_ScopeCode", scope)
    owner = _owner(resource)
    _contact(root, "contact", owner, "pointOfContact")
    _sub(_sub(root, "gmd", "dateStamp"), "gco", "DateTime").text = _date(
        resource.get("last_updated") or resource.get("date")
    )
    _text(root, "gmd", "metadataStandardName", "ISO 19115:2003/19139")
    _text(root, "gmd", "metadataStandardVersion", "1.0")
    srid = resource.get("srid")
    if srid:
        code = str(srid).removeprefix("EPSG:")
        rs = _sub(_sub(root, "gmd", "referenceSystemInfo"), "gmd", "MD_ReferenceSystem")
        identifier = _sub(_sub(rs, "gmd", "referenceSystemIdentifier"), "gmd", "RS_Identifier")
        _text(identifier, "gmd", "code", code)
        _text(identifier, "gmd", "codeSpace", "EPSG")

    ident = _sub(_sub(root, "gmd", "identificationInfo"), "gmd", "MD_DataIdentification")
    citation = _sub(_sub(ident, "gmd", "citation"), "gmd", "CI_Citation")
    _text(citation, "gmd", "title", resource.get("title"))
    for kind, value in (("creation", resource.get("created")), ("publication", resource.get("date"))):
        if value:
            date = _sub(_sub(citation, "gmd", "date"), "gmd", "CI_Date")
            _sub(_sub(date, "gmd", "date"), "gco", "DateTime").text = _date(value)
            _code(date, "dateType", "CI_DateTypeCode", kind)
    _text(ident, "gmd", "abstract", resource.get("abstract") or "")
    _contact(ident, "pointOfContact", owner, "owner")
    if resource.get("thumbnail_url"):
        graphic = _sub(_sub(ident, "gmd", "graphicOverview"), "gmd", "MD_BrowseGraphic")
        _text(graphic, "gmd", "fileName", resource["thumbnail_url"])
        _text(graphic, "gmd", "fileType", "image/png")
    for kind, names in (
        ("theme", _names(resource.get("keywords"))),
        ("place", _names(resource.get("regions"))),
    ):
        if names:
            keywords = _sub(_sub(ident, "gmd", "descriptiveKeywords"), "gmd", "MD_Keywords")
            for name in names:
                _text(keywords, "gmd", "keyword", name)
            _code(keywords, "type", "MD_KeywordTypeCode", kind)
    _sub(_sub(ident, "gmd", "language"), "gco", "CharacterString").text = str(
        resource.get("language") or "eng"
    )
    category = _category(resource)
    if category in TOPIC_CATEGORIES:
        _sub(_sub(ident, "gmd", "topicCategory"), "gmd", "MD_TopicCategoryCode").text = category
    bbox = resource.get("bbox")
    if bbox and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox):
        extent = _sub(_sub(ident, "gmd", "extent"), "gmd", "EX_Extent")
        box = _sub(_sub(extent, "gmd", "geographicElement"), "gmd", "EX_GeographicBoundingBox")
        for name, value in zip(
            ("westBoundLongitude", "eastBoundLongitude", "southBoundLatitude", "northBoundLatitude"),
            (bbox[0], bbox[2], bbox[1], bbox[3]),
            strict=True,
        ):
            _sub(_sub(box, "gmd", name), "gco", "Decimal").text = repr(float(value))

    online = links if links is not None else [link for link in resource.get("links") or [] if link.get("url")]
    if online:
        distribution = _sub(_sub(root, "gmd", "distributionInfo"), "gmd", "MD_Distribution")
        options = _sub(_sub(distribution, "gmd", "transferOptions"), "gmd", "MD_DigitalTransferOptions")
        for link in online:
            resource_el = _sub(_sub(options, "gmd", "onLine"), "gmd", "CI_OnlineResource")
            _sub(_sub(resource_el, "gmd", "linkage"), "gmd", "URL").text = str(link["url"])
            if link.get("protocol") or link.get("link_type"):
                _text(resource_el, "gmd", "protocol", link.get("protocol") or link.get("link_type"))
            if link.get("name"):
                _text(resource_el, "gmd", "name", link["name"])
            if link.get("description"):
                _text(resource_el, "gmd", "description", link["description"])
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def dublin_core(resource: dict[str, Any], flavour: str = "csw") -> bytes:
    """The resource as Dublin Core: a CSW ``csw:Record`` (``flavour`` csw) or ``oai_dc:dc``."""
    if flavour == "oai_dc":
        root = etree.Element(_q("oai_dc", "dc"), nsmap={k: NS[k] for k in ("oai_dc", "dc", "xsi")})
    elif flavour == "csw":
        root = etree.Element(_q("csw", "Record"), nsmap={k: NS[k] for k in ("csw", "dc", "dct", "ows")})
    else:
        raise ValueError(f"unknown Dublin Core flavour {flavour!r}")
    _sub(root, "dc", "identifier").text = str(resource.get("uuid") or resource.get("pk"))
    _sub(root, "dc", "title").text = str(resource.get("title") or "")
    _sub(root, "dc", "type").text = str(resource.get("resource_type") or "dataset")
    for name in [*_names(resource.get("keywords")), *_names(resource.get("regions"))]:
        _sub(root, "dc", "subject").text = name
    category = _category(resource)
    if category:
        _sub(root, "dc", "subject").text = category
    _sub(root, "dc", "creator").text = _owner(resource)
    _sub(root, "dc", "date").text = _date(resource.get("date") or resource.get("created"))
    if flavour == "csw":
        _sub(root, "dct", "abstract").text = str(resource.get("abstract") or "")
        _sub(root, "dct", "modified").text = _date(resource.get("last_updated") or resource.get("date"))
        for link in resource.get("links") or []:
            if link.get("url"):
                ref = _sub(
                    root, "dct", "references", scheme=str(link.get("link_type") or link.get("protocol") or "")
                )
                ref.text = str(link["url"])
        bbox = resource.get("bbox")
        if bbox and len(bbox) == 4:
            box = _sub(root, "ows", "BoundingBox", crs="urn:ogc:def:crs:EPSG::4326", dimensions="2")
            # EPSG:4326 axis order: latitude first.
            _sub(box, "ows", "LowerCorner").text = f"{float(bbox[1])!r} {float(bbox[0])!r}"
            _sub(box, "ows", "UpperCorner").text = f"{float(bbox[3])!r} {float(bbox[2])!r}"
    else:
        _sub(root, "dc", "description").text = str(resource.get("abstract") or "")
        if resource.get("bbox"):
            west, south, east, north = (float(v) for v in resource["bbox"])
            _sub(root, "dc", "coverage").text = f"North {north}, South {south}, East {east}, West {west}"
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def read_title(document: bytes) -> str | None:
    """The title of an ISO 19139 or Dublin Core document; None if it has none or does not parse."""
    try:
        root = etree.fromstring(document, SAFE_PARSER)
    except etree.XMLSyntaxError:
        return None
    paths = (
        "gmd:identificationInfo/*/gmd:citation/gmd:CI_Citation/gmd:title/gco:CharacterString",
        "//dc:title",
    )
    for path in paths:
        found = root.xpath(path, namespaces=NS)
        if found and (found[0].text or "").strip():
            return found[0].text.strip()[:500]
    return None
